"""The one stratified split, shared by the datasets, the search's validation split and the linear probe."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split


def stratified_split(labels: torch.Tensor | np.ndarray, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (kept, held-out) index tensors, each sorted, with ``fraction`` of the samples held out.

    Stratified by label when every class has two samples and the held-out part has room for one of each;
    otherwise (a class of one, a tiny fraction) a plain seeded shuffle, which scikit-learn would refuse.
    Shape: labels (N,) int -> (N - M,), (M,) int64.
    """
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    counts = np.bincount(y)
    seen = counts[counts > 0]
    stratify = y if seen.min() >= 2 and len(y) * fraction >= len(seen) else None
    kept, held = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=stratify)
    return torch.from_numpy(np.sort(kept)), torch.from_numpy(np.sort(held))
