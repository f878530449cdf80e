"""Datasets held in memory as uint8 (N, C, H, W) with int64 labels, behind a registry.

Loaders return a ``Dataset``; nothing here decodes per image at training time. ``DATASETS``, the table of what
is registered (with the ``REPBENCH_DATASETS`` plugins), lives in bench/dataset_registry.py, which imports no torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch
from torchvision.transforms.v2.functional import resize

from bench.dataset_registry import BUILTIN, DATASETS, PLUGIN_FORMAT, PLUGIN_RE, _plugins

__all__ = ["BUILTIN", "DATASETS", "PLUGIN_FORMAT", "PLUGIN_RE", "Dataset", "_plugins", "class_subset", "load_dataset",
           "resized"]


@dataclass
class Dataset:
    """Shape: train_x / test_x (N, C, H, W) uint8; train_y / test_y (N,) int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str = ""
    # Captions per image, for image-text methods (None when the dataset has none).
    train_text: list[str] | None = None
    test_text: list[str] | None = None
    # Per-image extras (other class definitions, attributes, prompt templates), aligned with the splits.
    extras: dict = field(default_factory=dict)
    # Published per-channel (mean, std) in 0..1, used instead of the training images' own when given.
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # Images without labels (STL-10's ``unlabeled`` split), (U, C, H, W) uint8: pre-training draws from train_x and
    # these together; probes and protocols never see them.
    unlabeled_x: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.norm is not None:
            return self.norm
        x = self.train_x.float().div(255)
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    def subset(self, split: str, keep: torch.Tensor) -> Dataset:
        """The same dataset with only the ``keep`` images of ``split`` (train | test), their captions and extras."""
        x, y, text = (self.train_x, self.train_y, self.train_text) if split == "train" else \
            (self.test_x, self.test_y, self.test_text)
        text = [text[i] for i in keep] if text else None
        extras = _subset_extras(self.extras, split, keep)
        if split == "train":
            return replace(self, train_x=x[keep], train_y=y[keep], train_text=text, extras=extras)
        return replace(self, test_x=x[keep], test_y=y[keep], test_text=text, extras=extras)


def load_dataset(name: str, data_root: str | None = None, per_class: int | None = None,
                 test_per_class: int | None = None, image_size: int | None = None) -> Dataset:
    """``image_size``: loaders that decode (folder trees) decode at that side; other datasets are resized to it."""
    loader = DATASETS.get(name)
    if image_size and "image_size" in inspect.signature(loader).parameters:
        ds = loader(data_root=data_root, image_size=image_size)
    else:
        ds = loader(data_root=data_root)
    if image_size and ds.image_size != image_size:
        ds = resized(ds, image_size)
    if per_class:
        ds = ds.subset("train", class_subset(ds.train_y, per_class))
    if test_per_class:
        ds = ds.subset("test", class_subset(ds.test_y, test_per_class))
    return ds


def resized(ds: Dataset, size: int) -> Dataset:
    """Every split resized (antialiased, uint8 kept) to ``size`` x ``size``."""
    def fit(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else resize(x, [size, size], antialias=True)
    return replace(ds, train_x=fit(ds.train_x), test_x=fit(ds.test_x), unlabeled_x=fit(ds.unlabeled_x))


def class_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of the first ``per_class`` images of each class in a seeded shuffle (same for every run)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    picked = [order[labels[order] == c][:per_class] for c in labels.unique()]
    return torch.cat(picked).sort().values


def _subset_extras(extras: dict, split: str, keep: torch.Tensor) -> dict:
    """Per-image extras (other class definitions, attributes) follow the images into a subset."""
    out = dict(extras)
    if "class_sets" in extras:
        out["class_sets"] = {name: {**cs, f"{split}_y": torch.as_tensor(cs[f"{split}_y"])[keep]}
                             for name, cs in extras["class_sets"].items()}
    if "attributes" in extras and split in extras["attributes"]:
        out["attributes"] = {**extras["attributes"],
                             split: {k: torch.as_tensor(v)[keep] for k, v in extras["attributes"][split].items()}}
    return out
