"""Image trees in torchvision's ImageFolder layout: ``imagefolder``, ``imagenet`` and ``imagenet100``.

A tree is ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (ILSVRC's val images sorted into one folder per
wnid), ROOT being ``--data-root`` or ``$REPBENCH_DATA``. Every image is decoded once at load, converted to RGB,
resized on its short side and centre-cropped to a square of ``$REPBENCH_IMAGE_SIZE`` pixels (default 64), and
held in memory. ``imagenet100`` is the 100 classes of CMC's list (``imagenet100.txt``, Tian et al. 2019, from
HobbitLong/CMC) taken from an ImageNet tree; class indices follow the sorted wnids, as ImageFolder gives them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets import ImageFolder

from bench.core.errors import UsageError
from bench.data import Dataset
from bench.data.roots import candidates, image_size

DEFAULT_SIZE = 64
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET100_LIST = Path(__file__).with_name("imagenet100.txt")
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


def _decode(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            return np.asarray(im).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UsageError(f"cannot decode the image {path} ({type(err).__name__}); remove or replace the file") from None


def _images(folder: ImageFolder, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # PIL releases the GIL while decoding, so threads use every core without copying arrays between processes.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        x = list(pool.map(lambda s: _decode(s[0], size), folder.samples))
    return torch.from_numpy(np.stack(x)), torch.tensor(folder.targets, dtype=torch.int64)


def load_tree(name: str, title: str, data_root: str | None, classes: list[str] | None = None, norm=None,
              size: int | None = None) -> Dataset:
    root = _tree(title, data_root)
    train, val = _scan(title, root / "train", classes), _scan(title, root / "val", classes)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise UsageError(f"{title} under {root}: train/ and val/ have different classes ({', '.join(only[:5])} in only "
                         f"one of them); give both the same class folders")
    size = size or image_size(DEFAULT_SIZE)
    (tr_x, tr_y), (te_x, te_y) = _images(train, size), _images(val, size)
    return Dataset(name, tr_x, tr_y, te_x, te_y, list(train.classes), source=str(root), norm=norm)


def imagefolder(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """Any ImageFolder tree; normalised with its own training images' statistics."""
    return load_tree("imagefolder", "ImageFolder", data_root, size=image_size)


def imagenet(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """ILSVRC-2012 in ImageFolder layout (1000 classes); normalised with the usual ImageNet statistics."""
    return load_tree("imagenet", "ImageNet", data_root, norm=IMAGENET_NORM, size=image_size)


def imagenet100_classes() -> list[str]:
    return IMAGENET100_LIST.read_text().split()


def imagenet100(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """CMC's ImageNet-100: the 100 listed classes of an ImageNet tree; every one must be in train/ and val/."""
    wanted = imagenet100_classes()
    root = _tree("ImageNet-100", data_root)
    for split in ("train", "val"):
        missing = [c for c in wanted if not (root / split / c).is_dir()]
        if missing:
            raise UsageError(f"ImageNet-100: {root / split} lacks {len(missing)} of the 100 classes of "
                             f"{IMAGENET100_LIST.name} (first: {', '.join(missing[:3])}); point --data-root at an ImageNet "
                             "tree holding a folder per wnid")
    return load_tree("imagenet100", "ImageNet-100", data_root, wanted, IMAGENET_NORM, image_size)
