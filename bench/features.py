"""Frozen features from the un-augmented (center) view, extracted once and shared by every protocol.

``extract`` runs an encoder over uint8 images; ``cached_features`` keeps the result on disk under a
key of (checkpoint, dataset, split, layer) so a second evaluation of the same checkpoint, or a
re-run after a crash, reads them back instead of re-running the backbone. ``feature_module`` picks
the backbone or the projection-head output of a method; ``load_npz`` reads features computed elsewhere
(``repbench eval-features``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.fx.experimental.optimization import fuse

from bench.augment import Normalise
from bench.core import dist as cdist
from bench.core.errors import UsageError
from bench.store import atomic_write_bytes
from protocols.base import check_label_range

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
    # On a CPU batch 256 keeps the activations in cache (results/benchmarks/throughput.md).
    batch_size = batch_size or (256 if device.type == "cpu" else 1024)
    net = inference_copy(encoder)
    norm = Normalise(mean, std, device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images_u8), batch_size):
            x = norm(images_u8[i:i + batch_size].to(device, non_blocking=True))
            out.append(net(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def extract_sharded(encoder: nn.Module, images_u8: torch.Tensor, mean, std,
                    device: str | torch.device = "cpu") -> torch.Tensor | None:
    """``extract`` over the ranks of a process group: each rank its contiguous slice of the images, the features
    gathered to rank 0 in image order (tensor collectives, nothing pickled). Rank 0 gets (N, D) float32, equal to
    one process's ``extract`` to float32 round-off; the other ranks get None. One process: ``extract`` itself."""
    world, n = cdist.world_size(), len(images_u8)
    if world == 1 or n < world:
        full = extract(encoder, images_u8, mean, std, device)
        return full if cdist.rank() == 0 else None
    bounds = [r * n // world for r in range(world + 1)]
    rank, rows = cdist.rank(), -(-n // world)  # every slice padded to the longest, for equal-shaped collectives
    mine = extract(encoder, images_u8[bounds[rank]:bounds[rank + 1]], mean, std, device)
    # Gloo gathers CPU tensors, NCCL device tensors: the padded slice goes where the backend can send it.
    where = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(rows, mine.shape[1], dtype=mine.dtype, device=where)
    padded[:len(mine)] = mine.to(where)
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0)
    if rank != 0:
        return None
    return torch.cat([p[:bounds[r + 1] - bounds[r]].cpu() for r, p in enumerate(parts)])


def inference_copy(encoder: nn.Module) -> nn.Module:
    """An eval-mode copy with each Conv/BatchNorm pair folded into one conv (torch.fx) and channels_last weights.

    Folding roughly halves a convnet's extraction time on a CPU, channels_last as much again
    (results/benchmarks/throughput.md). It needs a traceable module; one that is not (data-dependent control
    flow) is only copied. Features match the unfolded network to float32 round-off.
    """
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


def load_npz(path: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) float32 and y (N,) int64 of a features .npz file; anything unusable is a UsageError naming the file.

    Loaded with ``allow_pickle=False``: an archive holding object arrays is refused, never unpickled.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--{which} {path}: no such file")
    if not zipfile.is_zipfile(p):
        raise UsageError(f"--{which} {path} is not an .npz archive; write it with numpy.savez(path, x=..., y=...)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                held = ", ".join(z.files) or "nothing"
                raise UsageError(f"--{which} {path} has no array {missing[0]!r} (it holds {held}); "
                                 "save features as x (N, D) and labels as y (N,)")
            x, y = z["x"], z["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UsageError(f"--{which} {path} cannot be read as .npz ({err})") from None
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"--{which} {path}: x must hold real numbers, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"--{which} {path}: labels y must be integers 0..C-1, got dtype {y.dtype}")
    if x.ndim != 2:
        raise UsageError(f"--{which} {path}: x must be 2-D (N, D), got shape {x.shape}")
    if y.ndim != 1:
        raise UsageError(f"--{which} {path}: labels y must be 1-D (N,), got shape {y.shape}")
    if len(y):  # min and max in the file's own dtype: a uint64 label would wrap negative as int64
        check_label_range(int(y.min()), int(y.max()), f"--{which} {path}: labels y")
    return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))

