"""Frozen features from the un-augmented (center) view, extracted once and shared by every protocol.

``extract`` runs an encoder over uint8 images; ``cached_features`` keeps the result on disk under a
key of (checkpoint, dataset, split, layer) so a second evaluation of the same checkpoint, or a
re-run after a crash, reads them back instead of re-running the backbone. ``feature_module`` picks
the backbone or the projection-head output of a method.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.errors import UsageError
from bench.store import atomic_write_bytes

LAYERS = ("backbone", "head")
CACHE_FORMAT = 1  # bump when what is stored changes, so old cache files are never misread


@torch.no_grad()
def extract(encoder: nn.Module, images_u8: torch.Tensor, mean, std, device: str | torch.device = "cpu",
            batch_size: int | None = None) -> torch.Tensor:
    """Encoder features of uint8 images, in eval mode (frozen BN statistics).

    Runs an inference copy (see ``inference_copy``); the encoder itself is left as it was.
    Shape: images_u8 (N, C, H, W) uint8 -> (N, D) float32 on the CPU.
    """
    device = torch.device(device)
    # Measured on 2 cores, ConvNet, 10k images: batch 256 keeps activations in cache (1.35 s vs 1.8 s at 1024).
    batch_size = batch_size or (256 if device.type == "cpu" else 1024)
    net = inference_copy(encoder)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images_u8), batch_size):
            x = images_u8[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
            x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def inference_copy(encoder: nn.Module) -> nn.Module:
    """An eval-mode copy with each Conv/BatchNorm pair folded into one conv (torch.fx) and channels_last weights.

    Measured on 2 cores, ConvNet over 10k Fashion-MNIST images: 5.2 s as is, 2.8 s channels_last, 1.35 s
    folded + channels_last. Folding needs a traceable module; one that is not (data-dependent control flow)
    is only copied. Features match the unfolded network to float32 round-off.
    """
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(encoder).eval()
    # torch.fx raises many kinds of error on untraceable code; the unfolded copy is still correct.
    with contextlib.suppress(Exception):
        net = fuse(net)
    return net.to(memory_format=torch.channels_last)


class _Embed(nn.Module):
    """A method's ``embed`` (the loss's input: projection-head output for most SSL methods) as a module."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.embed(x)


def feature_module(method: nn.Module, layer: str = "backbone") -> nn.Module:
    """The module whose output is evaluated: ``backbone`` = method.encoder, ``head`` = method.embed."""
    if layer == "backbone":
        return method.encoder
    if layer == "head":
        return _Embed(method)
    raise UsageError(f"unknown feature layer {layer!r}; choose one of {', '.join(LAYERS)}")


# --------------------------------------------------------------------------- the on-disk cache


def checkpoint_identity(checkpoint: str | Path) -> str:
    """What identifies the weights: the sha256 of a checkpoint file's bytes, else the string itself (e.g. a run id)."""
    path = Path(checkpoint)
    if path.is_file():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"sha256:{h.hexdigest()}"
    return str(checkpoint)


def cache_path(cache_dir: str | Path, checkpoint: str | Path, dataset: str, split: str, layer: str) -> Path:
    ident = json.dumps([CACHE_FORMAT, checkpoint_identity(checkpoint), dataset, split, layer])
    key = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{dataset}-{split}-{layer}-{key}.npz"


def _load_cached(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache entry is recomputed, never trusted
    if x.ndim != 2 or y.shape != (len(x),):
        return None
    return torch.from_numpy(x.astype(np.float32, copy=False)), torch.from_numpy(y.astype(np.int64, copy=False))


def cached_features(cache_dir: str | Path, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]], *,
                    checkpoint: str | Path, dataset: str, split: str, layer: str = "backbone",
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of one split, from the cache when present, else from ``compute()`` and then stored.

    The key is (checkpoint, dataset, split, layer): ``checkpoint`` is a checkpoint file (its bytes are
    hashed, so retraining into the same path never reads stale features) or any string that names
    the weights uniquely (e.g. a run id for weights that are not saved). Written atomically.
    Shape: x (N, D) float32, y (N,) int64.
    """
    if layer not in LAYERS:
        raise UsageError(f"unknown feature layer {layer!r}; choose one of {', '.join(LAYERS)}")
    path = cache_path(cache_dir, checkpoint, dataset, split, layer)
    hit = _load_cached(path) if path.exists() else None
    if hit is not None:
        return hit
    x, y = compute()
    x = x.detach().float().cpu().contiguous()
    y = y.detach().long().cpu().contiguous()
    buf = io.BytesIO()
    np.savez(buf, x=x.numpy(), y=y.numpy())
    atomic_write_bytes(path, buf.getvalue())
    return x, y


# --------------------------------------------------------------------------- helpers shared by the protocols


def resolve_device(train, device: str | torch.device | None = None) -> torch.device:
    """The device a protocol computes on: the explicit setting, else the pipeline's ``meta["device"]``, else CPU."""
    dev = device or getattr(train, "meta", {}).get("device") or "cpu"
    dev = torch.device(dev)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix work is native here: CUDA, or a CPU with AMX or AVX512-BF16 (oneDNN).

    The training loop's autocast and the linear probe's products both ask. Measured on this project's 2-core CPU
    (AMX): the convnet SimCLR step under bf16 autocast 270 ms vs 460 ms in float32 for 2 views of 256.
    Elsewhere bf16 is emulated and slower, so both stay float32.
    """
    if device.type == "cuda":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


# Below this many elements per operation a CPU op takes well under a millisecond, and waking a second
# OpenMP thread costs more than it saves; on a shared, loaded machine a parallel region can wait a whole
# scheduler slice for it (measured here under load: 5000x256 linear probe 47 s with 2 threads, 2.8 s with 1).
SMALL_OP_ELEMENTS = 1 << 21


@contextlib.contextmanager
def threads_for(elements: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run single-threaded while the typical operation touches fewer than SMALL_OP_ELEMENTS elements."""
    before = torch.get_num_threads()
    single = torch.device(device).type == "cpu" and elements < SMALL_OP_ELEMENTS and before > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(before)


def threads_by_size(size: Callable[..., int]) -> Callable[[Callable], Callable]:
    """Decorate a protocol to run single-threaded when ``size(train, test)`` (elements of its typical
    operation) is small, see ``threads_for``. Eigendecompositions and small products inside LAPACK/BLAS
    suffer the same wake-up cost as element-wise operations."""

    def decorate(protocol: Callable) -> Callable:
        @functools.wraps(protocol)
        def wrapper(train, test, *args, **kwargs):
            with threads_for(size(train, test), resolve_device(train, kwargs.get("device"))):
                return protocol(train, test, *args, **kwargs)

        return wrapper

    return decorate


def check_features(train, test) -> None:
    """Reject what no protocol can evaluate, with one line saying what is wrong (UsageError)."""
    for name, f in (("train", train), ("test", test)):
        if f.x.ndim != 2:
            raise UsageError(f"{name} features must be a 2-D array (N, D), got shape {tuple(f.x.shape)}")
        if f.y.ndim != 1 or len(f.y) != len(f.x):
            raise UsageError(f"{name} labels must be a 1-D array with one label per row of x "
                             f"({len(f.x)} rows), got shape {tuple(f.y.shape)}")
        if len(f.x) == 0:
            raise UsageError(f"{name} split is empty; it needs at least one sample")
        if not torch.isfinite(f.x).all():
            bad = int((~torch.isfinite(f.x)).any(1).sum())
            raise UsageError(f"{name} features contain NaN or inf in {bad} row(s); fix or drop them")
    if train.x.shape[1] != test.x.shape[1]:
        raise UsageError(f"feature dimensions differ: train has {train.x.shape[1]}, test has {test.x.shape[1]}")
    classes = int(train.y.max()) + 1
    for name, f in (("train", train), ("test", test)):
        lo, hi = int(f.y.min()), int(f.y.max())
        if lo < 0 or hi >= classes:
            raise UsageError(f"{name} labels must be 0..C-1 with C={classes} classes seen in train, "
                             f"found {lo}..{hi}")
    missing = sorted(set(range(classes)) - set(train.y.unique().tolist()))
    if missing:
        raise UsageError(f"train labels must cover 0..C-1; class(es) {missing[:5]} have no train sample")
