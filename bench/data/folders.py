"""Image trees in torchvision's ImageFolder layout: ``imagefolder``, ``imagenet`` and ``imagenet100``.

A tree is ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (ILSVRC's val images sorted into one folder per
wnid), ROOT being ``--data-root`` or ``$REPBENCH_DATA``. Every image is decoded once at load, converted to RGB,
resized on its short side and centre-cropped to a square of ``$REPBENCH_IMAGE_SIZE`` pixels (default 64), and
held in memory. ``imagenet100`` is the 100 classes of CMC's list (``imagenet100.txt``, Tian et al. 2019, from
HobbitLong/CMC) taken from an ImageNet tree; class indices follow the sorted wnids, as ImageFolder gives them.

JPEGs are decoded at the smallest DCT scale (``Image.draft``) that still covers the square (about twice as fast
for 64 px from ImageNet-sized files). ``--data-root`` may also be a prepared store (``bench.data.prepared``), and
a store prepared from the same tree at the same size in the cache is used instead of decoding (see there);
``prepare_tree`` writes one, decoding in DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from bench.core.errors import UsageError
from bench.data import Dataset, prepared
from bench.data.cache import env_value
from bench.data.roots import candidates, image_size

DEFAULT_SIZE = 64
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET100_LIST = Path(__file__).with_name("imagenet100.txt")
TITLES = {"imagefolder": "ImageFolder", "imagenet": "ImageNet", "imagenet100": "ImageNet-100"}
NORMS = {"imagefolder": None, "imagenet": IMAGENET_NORM, "imagenet100": IMAGENET_NORM}
LAYOUT = ("expected ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg, ILSVRC's val images sorted into a folder per "
          "class (pass --data-root ROOT)")


class _Listed(ImageFolder):
    """An ImageFolder restricted to a fixed list of class folders (the others in the tree are ignored)."""

    def __init__(self, root: str, classes: list[str]) -> None:
        self.listed = sorted(classes)
        super().__init__(root)

    def find_classes(self, directory):
        return self.listed, {c: i for i, c in enumerate(self.listed)}


def _tree(title: str, data_root: str | None) -> Path:
    cands = candidates(data_root)
    for cand in cands:
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    absent = [s for s in ("train", "val") if not (cands[0] / s).is_dir()]
    raise UsageError(f"{title} not found: {cands[0]} has no {' or '.join(absent)}/ folder; {LAYOUT}")


def _scan(title: str, folder: Path, classes: list[str] | None) -> ImageFolder:
    try:
        return ImageFolder(str(folder)) if classes is None else _Listed(str(folder), classes)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"{title} folder {folder} is not in ImageFolder layout ({err}); {LAYOUT}") from None


def decode(path: str, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, short side resized, centre crop."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG only: decode at a reduced DCT scale still >= size on both sides
            im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            return np.asarray(im).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UsageError(f"cannot decode the image {path} ({type(err).__name__}); remove or replace the file") from None


def _images(folder: ImageFolder, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # PIL releases the GIL while decoding, so threads use every core without copying arrays between processes.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        x = list(pool.map(lambda s: decode(s[0], size), folder.samples))
    return torch.from_numpy(np.stack(x)), torch.tensor(folder.targets, dtype=torch.int64)


def scan(name: str, data_root: str | None) -> tuple[Path, ImageFolder, ImageFolder]:
    """A tree dataset's root and its train and val splits as listed (nothing decoded)."""
    title, classes = TITLES[name], imagenet100_classes() if name == "imagenet100" else None
    root = _tree(title, data_root)
    if classes is not None:
        _check_imagenet100(root, classes)
    train, val = _scan(title, root / "train", classes), _scan(title, root / "val", classes)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise UsageError(f"{title} under {root}: train/ and val/ have different classes ({', '.join(only[:5])} in only "
                         f"one of them); give both the same class folders")
    return root, train, val


def fingerprint(root: Path, *splits: ImageFolder) -> str:
    """What a store made from this tree must match: relative path, label, byte size and mtime of every image."""
    h = hashlib.sha256()
    for folder in splits:
        for path, label in folder.samples:
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"sha256:{h.hexdigest()}"


def _asked_size(size: int | None) -> int | None:
    """The side the run asks for: --image-size, else $REPBENCH_IMAGE_SIZE, else None (a store's own is fine)."""
    return size or (image_size(DEFAULT_SIZE) if env_value("REPBENCH_IMAGE_SIZE") else None)


def load_tree(name: str, data_root: str | None, size: int | None = None) -> Dataset:
    if prepared.is_store(data_root):
        return prepared.load(data_root, name, _asked_size(size))
    root, train, val = scan(name, data_root)
    size = _asked_size(size) or DEFAULT_SIZE
    if prepared.is_store(prepared.default_out(name, size)):
        found = prepared.find(name, size, root, fingerprint(root, train, val))
        if found is not None:
            return found
    (tr_x, tr_y), (te_x, te_y) = _images(train, size), _images(val, size)
    return Dataset(name, tr_x, tr_y, te_x, te_y, list(train.classes), source=str(root), norm=NORMS[name])


class _Decoding(torch.utils.data.Dataset):
    """A split's images decoded in a DataLoader worker; a failure comes back as its one-line message."""

    def __init__(self, folder: ImageFolder, size: int) -> None:
        self.samples, self.size = folder.samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path, label = self.samples[i]
        try:
            return torch.from_numpy(np.ascontiguousarray(decode(path, self.size))), label, ""
        except UsageError as err:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), label, str(err)


def _decoded(folder: ImageFolder, size: int, workers: int):
    for x, y, errors in DataLoader(_Decoding(folder, size), batch_size=64, num_workers=workers):
        first = next((e for e in errors if e), None)
        if first:
            raise UsageError(first)
        yield x, y


def prepare_tree(name: str, size: int, data_root: str | None, out: Path, workers: int) -> tuple[Path, int, float]:
    """Decode a tree once into a prepared store: (folder, images, seconds)."""
    t0 = time.perf_counter()
    root, train, val = scan(name, data_root)
    meta = {"dataset": name, "classes": list(train.classes), "size": size, "channels": 3,
            "source": str(root.resolve()), "norm": NORMS[name], "fingerprint": fingerprint(root, train, val)}
    n = prepared.write(out, meta, {"train": (len(train), _decoded(train, size, workers)),
                                   "test": (len(val), _decoded(val, size, workers))})
    return Path(out), n, time.perf_counter() - t0


def imagefolder(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """Any ImageFolder tree; normalised with its own training images' statistics."""
    return load_tree("imagefolder", data_root, image_size)


def imagenet(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """ILSVRC-2012 in ImageFolder layout (1000 classes); normalised with the usual ImageNet statistics."""
    return load_tree("imagenet", data_root, image_size)


def imagenet100_classes() -> list[str]:
    return IMAGENET100_LIST.read_text().split()


def _check_imagenet100(root: Path, wanted: list[str]) -> None:
    for split in ("train", "val"):
        missing = [c for c in wanted if not (root / split / c).is_dir()]
        if missing:
            raise UsageError(f"ImageNet-100: {root / split} lacks {len(missing)} of the 100 classes of "
                             f"{IMAGENET100_LIST.name} (first: {', '.join(missing[:3])}); point --data-root at an ImageNet "
                             "tree holding a folder per wnid")


def imagenet100(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """CMC's ImageNet-100: the 100 listed classes of an ImageNet tree; every one must be in train/ and val/."""
    return load_tree("imagenet100", data_root, image_size)
