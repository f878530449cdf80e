"""Stratified k-fold splits shaped for the batched solver: every fold's fitting set the same size."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold


def stratified_folds(labels: list[np.ndarray], folds: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified ``folds``-fold splits of G label sets, as index tensors into each set.

    The solver batches problems of one size, so every fitting set is trimmed to the smallest (one row at a time
    from its most frequent class: StratifiedKFold's folds differ by a row or two); every row is still validated
    exactly once. Validation sets are padded with -1 to the largest.
    Shape: G arrays (N,) with every class present at least ``folds`` times -> fit (G * folds, n), val (G * folds, m).
    """
    rng = np.random.default_rng(seed)
    fits, vals = [], []
    for y in labels:
        for fit, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
            fits.append((fit, y))
            vals.append(val)
    n = min(len(f) for f, _ in fits)
    fit = np.stack([np.sort(_trim(f, y, n, rng)) for f, y in fits])
    val = np.full((len(vals), max(len(v) for v in vals)), -1)
    for row, v in zip(val, vals, strict=True):
        row[:len(v)] = v
    return torch.from_numpy(fit), torch.from_numpy(val)


def _trim(rows: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    while len(rows) > n:
        members = np.flatnonzero(y[rows] == np.bincount(y[rows]).argmax())
        rows = np.delete(rows, rng.choice(members))
    return rows
