"""Prepared stores: a dataset decoded and resized once into uint8 .npy files that runs read memory-mapped.

``repbench data prepare NAME --size S`` writes, into ``--out`` (default ``$REPBENCH_CACHE/prepared/NAME-S``):

- ``train_x.npy``, ``test_x.npy`` (and ``unlabeled_x.npy`` for STL-10): uint8 (N, C, S, S), C = 3 for trees;
- ``train_y.npy``, ``test_y.npy``: int64 (N,) class indices;
- ``meta.json``: format, dataset, classes, size, channels, source (the folder it was read from), counts, the
  training images' per-channel mean/std (computed exactly, from integer sums, while writing), the norm the
  dataset publishes (ImageNet's, CIFAR's) or null, and for trees a fingerprint of the files it was made from.

Trees (imagefolder, imagenet, imagenet100) are decoded by DataLoader workers exactly as a tree run decodes them
(``folders.decode``: RGB, short side resized, centre crop), so a store and a tree run see the same pixels; other
datasets supported (cifar10, cifar100, stl10) are loaded and resized in chunks (antialiased, as ``--image-size``
does). The store is filled under a temp name beside ``--out`` and renamed whole when complete: a killed prepare
leaves no folder that looks finished (the next prepare removes its leftovers).

Reading: ``--data-root STORE`` (a folder holding ``meta.json``) loads it for the dataset it was prepared from;
another dataset, or an ``--image-size``/``$REPBENCH_IMAGE_SIZE`` other than the store's, is refused. Arrays are
opened with ``np.load(mmap_mode="c", allow_pickle=False)``: copy-on-write pages, so the tensors torch gets are
writable (no read-only warning, no undefined behaviour) and the file is never changed by a run. The Trainer then
streams training batches from the host (``bench.data.stream``). A store's normalisation is the published norm,
else its whole train split's statistics (also with ``--per-class``, which subsets after loading).

A tree run without ``--data-root STORE`` uses the store at the default place ``$REPBENCH_CACHE/prepared/NAME-S``
only when that store was prepared from the same root at the same size and its fingerprint (relative path, label,
byte size and mtime of every image) equals the tree's now: one place, one match, so never ambiguous. Any other
store there is ignored and the tree decoded as usual.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torchvision.transforms.v2.functional import resize

from bench.core.errors import UsageError
from bench.data import Dataset, load_dataset
from bench.data.cache import cache_dir, publish, remove_stale, temp_dir
from bench.store import read_json, write_json

FORMAT = 1
META = "meta.json"
READABLE = ("imagefolder", "imagenet", "imagenet100", "cifar10", "cifar100", "stl10")  # loaders that read stores
CHUNK = 256
SPLITS = ("train", "test", "unlabeled")
# Tensors made from a store's memmaps, by their storage address: how the Trainer tells mapped images from resident.
_MAPPED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
Batches = Iterable[tuple[torch.Tensor, torch.Tensor | None]]


def default_out(name: str, size: int) -> Path:
    return cache_dir() / "prepared" / f"{name}-{size}"


def is_store(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / META).is_file()


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` (or a view of it) lives in a store's memory-mapped file."""
    return _MAPPED.get(t.untyped_storage().data_ptr()) is not None


# --------------------------------------------------------------------------- reading


def _bad(path: Path, why: str) -> UsageError:
    return UsageError(f"prepared store {path} is unusable ({why}); prepare it again with 'repbench data prepare NAME "
                      f"--size S --out {path}'")


def _meta_problem(m: object) -> str | None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"{META} is not format {FORMAT}"
    ints = {"size": m.get("size"), "channels": m.get("channels"), **{f"counts.{k}": v for k, v in
                                                                      (m.get("counts") or {}).items()}}
    bad = [k for k, v in ints.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad or not {"train", "test"} <= set(m.get("counts") or {}) <= set(SPLITS):
        return f"{META} has no valid {(bad or ['counts (train, test, unlabeled)'])[0]}"
    if not isinstance(m.get("dataset"), str) or not isinstance(m.get("classes"), list) or not m["classes"]:
        return f"{META} lacks the dataset name or its classes"
    norm = m.get("norm")
    if norm is not None and not (isinstance(norm, list) and len(norm) == 2):
        return f"{META} has a norm that is not [mean, std]"
    stats = [m.get("mean"), m.get("std"), *(norm or [])]
    if not all(isinstance(s, list) and len(s) == m["channels"] and all(_finite(v) for v in s) for s in stats):
        return f"{META} has no finite mean/std per channel"
    return None


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as err:
        raise _bad(path, f"{META} unreadable: {type(err).__name__}") from None
    why = _meta_problem(meta)
    if why:
        raise _bad(path, why)
    return meta


def _open(path: Path, name: str, shape: tuple[int, ...], dtype: type) -> torch.Tensor:
    try:
        a = np.load(path / name, mmap_mode="c", allow_pickle=False)
    except FileNotFoundError:
        raise _bad(path, f"{name} is missing") from None
    except (OSError, ValueError) as err:
        raise _bad(path, f"{name} is not a readable .npy file: {err}") from None
    if a.shape != shape or a.dtype != dtype:
        raise _bad(path, f"{name} holds {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
    t = torch.from_numpy(a)
    _MAPPED[t.untyped_storage().data_ptr()] = t
    return t


def load(path: str | Path, name: str, size: int | None = None) -> Dataset:
    """The store at ``path`` as the dataset ``name``, memory-mapped; ``size``: the side the run asks for (None: any)."""
    path = Path(path)
    meta = read_meta(path)
    if meta["dataset"] != name:
        raise UsageError(f"{path} is a store prepared from {meta['dataset']}, not {name}; pass --dataset "
                         f"{meta['dataset']}, or prepare {name} with 'repbench data prepare {name} --size S'")
    s, c, counts, k = meta["size"], meta["channels"], meta["counts"], len(meta["classes"])
    if size and size != s:
        raise UsageError(f"{path} holds {s} px images but the run asks for {size} px; pass --image-size {s} "
                         f"(or unset REPBENCH_IMAGE_SIZE), or prepare a store with --size {size}")
    arrays = {f"{sp}_x": _open(path, f"{sp}_x.npy", (counts[sp], c, s, s), np.uint8) for sp in counts}
    for sp in ("train", "test"):
        y = arrays[f"{sp}_y"] = _open(path, f"{sp}_y.npy", (counts[sp],), np.int64)
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < k:
            raise _bad(path, f"{sp}_y.npy holds labels {int(y.min())}..{int(y.max())}, expected 0..{k - 1}")
    norm = meta.get("norm") or [meta["mean"], meta["std"]]
    return Dataset(name, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], list(meta["classes"]),
                   source=str(path), norm=(tuple(norm[0]), tuple(norm[1])), unlabeled_x=arrays.get("unlabeled_x"))


def find(name: str, size: int, root: Path, fingerprint: str) -> Dataset | None:
    """The default store of (name, size) when it was prepared from this very tree; else None (decode the tree)."""
    path = default_out(name, size)
    if not is_store(path):
        return None
    try:
        meta = read_json(path / META)
        if isinstance(meta, dict) and meta.get("source") == str(root.resolve()) and meta.get("fingerprint") == fingerprint:
            return load(path, name, size)
    except UsageError:
        pass  # a damaged cached store never blocks a run: the tree is decoded instead
    return None


# --------------------------------------------------------------------------- writing


class _Stats:
    """Exact per-channel sums of pixel values and their squares (Python ints: no overflow, no round-off)."""

    def __init__(self, channels: int) -> None:
        self.n, self.s, self.ss = 0, [0] * channels, [0] * channels

    def add(self, x: torch.Tensor) -> None:
        a = x.numpy().reshape(x.shape[0], x.shape[1], -1)
        # A batch's sums of squares stay below 2^53, so float64 sums them exactly, ~5x faster than torch's integer
        # reductions over axes (0, 2, 3), which cost more than decoding at 224 px (results/loader/README.md).
        f = a.astype(np.float64)
        self.n += a.shape[0] * a.shape[2]
        self.s = [t + int(v) for t, v in zip(self.s, a.sum(axis=(0, 2), dtype=np.int64), strict=True)]
        self.ss = [t + int(v) for t, v in zip(self.ss, np.einsum("bcn,bcn->c", f, f), strict=True)]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """As ``Dataset.mean_std``: in 0..1, unbiased std over every pixel, at least 1e-3."""
        n = max(self.n, 2)
        mean = [s / n / 255 for s in self.s]
        std = [max(math.sqrt(max(n * ss - s * s, 0) / (n * (n - 1))) / 255, 1e-3) for s, ss in zip(self.s, self.ss, strict=True)]
        return mean, std


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a memmap write to a full disk is a SIGBUS crash, not an error to report."""
    with path.open("r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: write as is
                raise


def _array(path: Path, dtype: type, shape: tuple[int, ...]) -> np.memmap:
    a = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    _reserve(path)
    return a


def _write_split(tmp: Path, split: str, n: int, shape: tuple[int, int, int], batches: Batches) -> _Stats | None:
    x = _array(tmp / f"{split}_x.npy", np.uint8, (n, *shape))
    y = _array(tmp / f"{split}_y.npy", np.int64, (n,)) if split != "unlabeled" else None
    stats, pos = _Stats(shape[0]) if split == "train" else None, 0  # normalisation uses the train split's only
    for xb, yb in batches:
        x[pos:pos + len(xb)] = xb.numpy()
        if y is not None:
            y[pos:pos + len(xb)] = yb.numpy()
        if stats is not None:
            stats.add(xb)
        pos += len(xb)
    if pos != n:
        raise UsageError(f"the {split} split gave {pos} images, expected {n}; its source changed while being prepared")
    for a in (x, y):
        if a is not None:
            a.flush()
    return stats


def check_preparable(name: str) -> None:
    if name not in READABLE:
        raise UsageError(f"{name} cannot be prepared: its loader does not read prepared stores; prepare one of "
                         f"{', '.join(READABLE)}")


def check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (is_store(out) or not any(out.iterdir()))):
        raise UsageError(f"--out {out} exists and is not a prepared store or an empty folder; choose another folder")


def write(out: Path, meta: dict, splits: dict[str, tuple[int, Batches]]) -> int:
    """Fill a temp folder beside ``out`` with ``splits`` ({split: (count, batches)}) and meta, then rename it to
    ``out`` (replacing an earlier store there). Returns the number of images written."""
    out = Path(out).absolute()
    check_out(out)
    key = hashlib.sha256(str(out).encode()).hexdigest()[:12]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out.parent)
        tmp = temp_dir(out.parent, key)
        tmp.mkdir()
    except OSError as err:
        raise UsageError(f"cannot write the store {out}: {err.strerror or err}; pass --out DIR in a writable folder") from None
    shape = (meta["channels"], meta["size"], meta["size"])
    try:
        stats = {split: _write_split(tmp, split, n, shape, b) for split, (n, b) in splits.items()}
        mean, std = stats["train"].mean_std()
        counts = {split: n for split, (n, _) in splits.items()}
        write_json(tmp / META, {"format": FORMAT, **meta, "counts": counts, "mean": mean, "std": std})
        publish(tmp, out, key)
    except OSError as err:
        raise UsageError(f"cannot write the store {out}: {err.strerror or err}; free some space or pass --out DIR") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when published
    return sum(counts.values())


def _chunks(x: torch.Tensor, y: torch.Tensor | None, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for i in range(0, len(x), CHUNK):
        xb = x[i:i + CHUNK]
        if xb.shape[-2:] != (size, size):
            xb = resize(xb, [size, size], antialias=True)
        yield xb.contiguous(), None if y is None else y[i:i + CHUNK]


def prepare_loaded(name: str, size: int, data_root: str | None, out: Path) -> tuple[Path, int, float]:
    """A dataset that loads into memory (CIFAR, STL-10) written as a store at ``size``: (folder, images, seconds)."""
    check_preparable(name)
    t0 = time.perf_counter()
    ds = load_dataset(name, data_root)
    splits = {"train": (len(ds.train_x), _chunks(ds.train_x, ds.train_y, size)),
              "test": (len(ds.test_x), _chunks(ds.test_x, ds.test_y, size))}
    if ds.unlabeled_x is not None:
        splits["unlabeled"] = (len(ds.unlabeled_x), _chunks(ds.unlabeled_x, None, size))
    meta = {"dataset": name, "classes": list(ds.classes), "size": size, "channels": ds.channels,
            "source": str(Path(ds.source).resolve()), "norm": ds.norm, "fingerprint": None}
    n = write(out, meta, splits)
    return Path(out), n, time.perf_counter() - t0
