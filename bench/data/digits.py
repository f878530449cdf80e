"""scikit-learn's 8x8 digits (1797 images, shipped with the package): the tests' dataset."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from bench.core.splits import stratified_split
from bench.data import Dataset


def digits(data_root: str | None = None) -> Dataset:
    """Stratified 80/20 split, seed 0."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = stratified_split(y, 0.2, 0)
    return Dataset("digits", x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)], source="sklearn.datasets.load_digits")
