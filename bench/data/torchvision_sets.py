"""CIFAR-10, CIFAR-100 (Krizhevsky 2009) and STL-10 (Coates et al. 2011), read through torchvision from a user's folder.

The folder is ``--data-root`` (or ``$REPBENCH_DATA``, or the download cache), holding torchvision's layout
(``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``) or being that folder itself.

STL-10: ``stl10`` pre-trains on the 5,000 labelled ``train`` images plus the 100,000 ``unlabeled`` ones
(``Dataset.unlabeled_x``, read from ``unlabeled_X.bin`` through torchvision; a method that reads labels trains on
the labelled ones only), fits its probes on ``train`` and tests on the 8,000 ``test`` images. The unlabeled split
is kept as torchvision gives it, a transposed view of the column-major file: no second 2.8 GB copy. Without
``unlabeled_X.bin`` the load is refused (``repbench data fetch stl10`` downloads the whole archive).

``--data-root`` may also be a prepared store of the same dataset (``bench.data.prepared``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, STL10

from bench.core.errors import UsageError
from bench.data import Dataset, prepared
from bench.data.roots import candidates, download_root

# Published per-channel statistics of the training splits (what the papers' code normalises with).
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
# What a damaged file makes torchvision's readers raise: a bad pickle, a missing key, a wrong size.
CORRUPT = (pickle.UnpicklingError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, OSError,
           RuntimeError, ImportError)


def _unchecked(files: list[list[str]]) -> list[list[str | None]]:
    """torchvision's file list without MD5s: check_integrity then asks only that each file exists. Hashing 170 MB
    at every load is slow, and the arrays are checked (shapes, label range) once read instead."""
    return [[name, None] for name, _ in files]


class _Cifar10(CIFAR10):
    # The batch files are Python pickles (the published format); torchvision unpickles them, so they are read
    # only from the folder the user named, and nothing else is ever unpickled.
    train_list, test_list = _unchecked(CIFAR10.train_list), _unchecked(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class _Cifar100(CIFAR100):
    train_list, test_list = _unchecked(CIFAR100.train_list), _unchecked(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


class _Stl10(STL10):
    # The train and test splits need only their own files (unlabeled_X.bin is checked apart, with its own advice).
    train_list, test_list = _unchecked(STL10.train_list[:2]), _unchecked(STL10.test_list)


class _Stl10Unlabeled(STL10):
    train_list, test_list = _unchecked(STL10.train_list), _unchecked(STL10.test_list)


STL10_UNLABELED = STL10.train_list[2][0]


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    reader: type
    official: type  # torchvision's own class, which checks MD5s: used for downloads
    num_classes: int

    @property
    def folder(self) -> str:
        return self.reader.base_folder

    @property
    def files(self) -> list[str]:
        meta = [self.reader.meta["filename"]] if issubclass(self.reader, CIFAR10) else []
        return [f for f, _ in self.reader.train_list + self.reader.test_list] + meta

    def hint(self) -> str:
        return f"expected {self.folder}/ holding {', '.join(self.files)} (run 'repbench data fetch {self.name}' or pass " \
               f"--data-root DIR)"


SPECS = {s.name: s for s in (Spec("cifar10", "CIFAR-10", _Cifar10, CIFAR10, 10),
                             Spec("cifar100", "CIFAR-100", _Cifar100, CIFAR100, 100),
                             Spec("stl10", "STL-10", _Stl10, STL10, 10))}


def _root(spec: Spec, cand: Path) -> Path | None:
    """The torchvision root for ``cand``: its parent when ``cand`` is the dataset folder itself."""
    if (cand / spec.folder).is_dir():
        return cand
    return cand.parent if cand.name == spec.folder and cand.is_dir() else None


def _find(spec: Spec, data_root: str | None) -> tuple[Path, Path]:
    cands = candidates(data_root)
    for cand in cands:
        root = _root(spec, cand)
        if root is not None:
            missing = [f for f in spec.files if not (root / spec.folder / f).is_file()]
            if missing:
                raise UsageError(f"{spec.title} folder {root / spec.folder} lacks {', '.join(missing)}; {spec.hint()}")
            return cand, root
    raise UsageError(f"{spec.title} not found in {', '.join(map(str, cands))}; {spec.hint()}")


def _read(spec: Spec, root: Path, cand: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N,C,H,W uint8, labels, classes) of one split, checked."""
    try:
        if spec.reader is _Stl10:
            d = spec.reader(str(root), split=split)
            x, y, classes = d.data, d.labels, _stl_classes(d)
        else:
            d = spec.reader(str(root), train=split == "train")
            x, y, classes = np.asarray(d.data).transpose(0, 3, 1, 2), np.asarray(d.targets), list(d.classes)
    except CORRUPT as err:
        raise UsageError(f"{spec.title} files under {cand} are corrupt ({type(err).__name__}: {err}); {spec.hint()}"
                         ) from None
    y = np.asarray(y, dtype=np.int64)
    why = _problem(x, y, classes, spec.num_classes)
    if why:
        raise UsageError(f"{spec.title} {split} split under {cand} is corrupt ({why}); {spec.hint()}")
    return x, y, classes


def _problem(x: np.ndarray, y: np.ndarray, classes: list[str], num_classes: int) -> str | None:
    if x.dtype != np.uint8 or len(x) != len(y):
        return f"{len(x)} images of {x.dtype} for {len(y)} labels"
    if len(classes) != num_classes:
        return f"{len(classes)} class names, expected {num_classes}"
    if len(y) and not 0 <= y.min() <= y.max() < num_classes:
        return f"labels {y.min()}..{y.max()}, expected 0..{num_classes - 1} after torchvision's decoding"
    return None


def _stl_classes(d: _Stl10) -> list[str]:
    """STL-10's class names: class_names.txt when shipped, else the published list."""
    names = vars(d).get("classes")
    return names if names else STL10_CLASSES


def _unlabeled(spec: Spec, root: Path, cand: Path) -> torch.Tensor:
    """STL-10's unlabeled split (U, 3, 96, 96) uint8, or one line naming the missing file and how to get it."""
    if not (root / spec.folder / STL10_UNLABELED).is_file():
        raise UsageError(f"STL-10 folder {root / spec.folder} lacks {STL10_UNLABELED} (the 100,000 unlabeled images stl10 "
                         "pre-trains on); run 'repbench data fetch stl10' or copy it from stl10_binary.tar.gz")
    try:
        x = _Stl10Unlabeled(str(root), split="unlabeled").data
    except CORRUPT as err:
        raise UsageError(f"STL-10 file {root / spec.folder / STL10_UNLABELED} is corrupt ({type(err).__name__}: {err}); "
                         f"{spec.hint()}") from None
    return torch.from_numpy(x)


def load(name: str, data_root: str | None, norm=None, image_size: int | None = None) -> Dataset:
    """``image_size`` only checks a prepared store's size; ``load_dataset`` resizes the others."""
    if prepared.is_store(data_root):
        return prepared.load(data_root, name, image_size)
    spec = SPECS[name]
    cand, root = _find(spec, data_root)
    tr_x, tr_y, classes = _read(spec, root, cand, "train")
    te_x, te_y, _ = _read(spec, root, cand, "test")
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(tr_x)), torch.from_numpy(tr_y),
                   torch.from_numpy(np.ascontiguousarray(te_x)), torch.from_numpy(te_y), classes, source=str(cand),
                   norm=norm, unlabeled_x=_unlabeled(spec, root, cand) if name == "stl10" else None)


def cifar10(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes; normalised with the published statistics."""
    return load("cifar10", data_root, CIFAR10_NORM, image_size)


def cifar100(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes; normalised with the published statistics."""
    return load("cifar100", data_root, CIFAR100_NORM, image_size)


def stl10(data_root: str | None = None, image_size: int | None = None) -> Dataset:
    """STL-10: 5k labelled train + 100k unlabeled / 8k test 96x96 colour images, 10 classes; its train split's
    statistics."""
    return load("stl10", data_root, image_size=image_size)


def fetch(name: str) -> str:
    """Keep a copy already found; else download with torchvision (which checks the MD5s) into the cache."""
    spec = SPECS[name]
    try:
        cand, root = _find(spec, None)
        if name != "stl10" or (root / spec.folder / STL10_UNLABELED).is_file():
            return f"{spec.title} already in {cand}"
    except UsageError:
        pass
    root = download_root()
    try:
        spec.official(str(root), download=True)
    except Exception as err:  # noqa: BLE001 - any network failure means the same advice
        raise UsageError(f"could not download {spec.title} with torchvision ({type(err).__name__}); download it "
                         f"by hand and pass --data-root DIR ({spec.hint()})") from None
    return f"downloaded {spec.title} with torchvision into {root}"
