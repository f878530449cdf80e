"""What every protocol sees, tensors only, and the scoring every protocol shares.

A protocol is ``evaluate(train: Features, test: Features, *, seed=0, device="cpu", <its settings>) -> Metrics``.
It returns one entry per result key (``"knn"``, ``"knn_k200"``, ``"linear"``...), each a flat dict holding the
settings that produced the values beside the values (fractions 0..1), so a number can never be separated from
how it was made. A setting a protocol does not have is an error (TypeError), never silently dropped.

Data a protocol cannot use, by one rule for every protocol:

- Bad input is refused (UsageError: one line, exit 2 at the CLI) before any work: labels that are not integers in
  [0, C) with C <= MAX_CLASSES and C at most the number of samples, not one label per row, an empty split,
  differing dimensions (``check_inputs``, run by every protocol on entry in O(N)); and, where features come from
  files (eval-features), NaN/inf or a class without a training sample (``check_features``).
- Valid data that cannot support one result is that entry skipped: ``{"skipped": "<reason>"}`` and nothing else
  (protocols.limits.skipped), the reason one line saying what is needed, what the data has, and the fix; the
  harness says each once on stderr and the other entries go on. Causes: too few images in a class for a few-shot
  setting (fewer images in a class than the setting labels), under 2 training samples for the linear probe, and
  memory: each protocol states a formula for what it allocates and checks it against the budget
  (protocols.limits.memory_budget) before allocating anything, never trying the allocation.
- Refused up front instead (UsageError before anything is computed or trained) when a protocol the user asked for
  would give nothing but skipped entries: ``repbench eval-features`` knows everything up front (memory included);
  ``repbench run`` checks the sample counts of the protocols named in --protocols before training (D is the
  encoder's, known only after).
- Documented fallbacks that still answer the question are not skips: k-NN with k above the training set uses
  all of it (``k_used``); K-Means with more classes than training samples fits one cluster per sample.

Each protocol module's ``limits(shape, **settings) -> {key: reason or ""}`` (registry ``protocols.LIMITS``) is that
decision for a ``protocols.limits.Shape``: the protocol itself and the harness's up-front checks ask the same one.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.core.errors import UsageError

Metrics = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ClassSet:
    """One class definition for zero-shot: names, their text embeddings, and the test labels under it.

    Shape: text (C, D) unit rows (prompt ensembles); y (N,) in 0..C-1. Both are None, with ``note`` saying why,
    when the labels do not fit the split (e.g. labels for the full split, a subset evaluated).
    """

    key: str  # result key: "zero-shot", "zero-shot-colour", ...
    names: tuple[str, ...]
    text: torch.Tensor | None
    y: torch.Tensor | None
    note: str = ""


@dataclass(frozen=True)
class TextSide:
    """What zero-shot and retrieval need from a method's text tower, computed by the harness.

    Shape: image (N, D) joint-space embeddings of the test images; captions (M, D) embeddings of the test split's
    distinct captions and caption_of_image (N,) in 0..M-1, or both None when the split has no captions.
    """

    image: torch.Tensor
    class_sets: tuple[ClassSet, ...]
    logit_scale: float
    templates: int  # prompt templates per class
    caption_source: str  # "dataset", or "class-name fallback" when training had no captions
    captions: torch.Tensor | None = None
    caption_of_image: torch.Tensor | None = None


@dataclass(frozen=True)
class Features:
    """Frozen features of one split. Shape: x (N, D) float32, y (N,) int64 with classes 0..C-1.

    ``num_classes``: C (default max(y) + 1); ``text``: the text side, for methods that have one (zero-shot).
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int = -1
    split: str = "test"
    text: TextSide | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            object.__setattr__(self, "num_classes", int(self.y.max()) + 1 if len(self.y) else 0)

    def __len__(self) -> int:
        return len(self.y)


# --------------------------------------------------------------------------- scoring shared by the protocols


def true_class_rank(scores: torch.Tensor, y: torch.Tensor, votes: bool = False) -> torch.Tensor:
    """0-based rank of the true class by score, ties to the lower class index (so rank 0 is ``argmax``).

    With ``votes`` (k-NN), a true class without a vote ranks last: it is never "in the top 5" by accident.
    Shape: scores (M, C), y (M,) -> (M,) int64.
    """
    s_true = scores.gather(1, y[:, None])
    cls = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > s_true) | ((scores == s_true) & (cls[None, :] < y[:, None]))
    rank = ahead.sum(1)
    return torch.where(s_true[:, 0] > 0, rank, torch.full_like(rank, scores.shape[1])) if votes else rank


def topk_from_rank(rank: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(top-1, top-5) fractions; top-5 is NaN with fewer than 5 classes (as CLIP_benchmark)."""
    if len(rank) == 0:
        return math.nan, math.nan
    top1 = (rank == 0).float().mean().item()
    top5 = (rank < 5).float().mean().item() if num_classes >= 5 else math.nan
    return top1, top5


def mean_per_class_recall(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Recall averaged over the classes present in y (scikit-learn's balanced accuracy)."""
    hit = torch.zeros(num_classes).index_add_(0, y, (pred == y).float())
    seen = torch.bincount(y, minlength=num_classes).float()
    return (hit[seen > 0] / seen[seen > 0]).mean().item() if len(y) else math.nan


def classification_metrics(scores: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top1, top5 (NaN below 5 classes) and mean per-class recall of class scores. Shape: scores (M, C), y (M,)."""
    scores, y = scores.cpu(), y.cpu()
    top1, top5 = topk_from_rank(true_class_rank(scores, y), num_classes)
    return {"top1": top1, "top5": top5, "mean_per_class_recall": mean_per_class_recall(scores.argmax(1), y, num_classes)}


# --------------------------------------------------------------------------- inputs and threads


MAX_CLASSES = 100_000  # labels are class indices: anything larger is an id that needs renumbering 0..C-1


def check_labels(y: torch.Tensor, name: str, num_classes: int) -> None:
    """Integer labels in [0, num_classes), num_classes <= MAX_CLASSES. O(N): min and max only, never range(C)."""
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UsageError(f"{name} labels must be integers 0..C-1, got dtype {str(y.dtype).removeprefix('torch.')}")
    lo, hi = (int(y.min()), int(y.max())) if len(y) else (0, -1)
    check_label_range(lo, hi, f"{name} labels")
    if num_classes > MAX_CLASSES:
        raise UsageError(f"{name} features declare C={num_classes} classes; at most {MAX_CLASSES} are supported")
    if hi >= num_classes:
        raise UsageError(f"{name} labels must be 0..C-1 with C={num_classes} classes, found {hi}")


def check_label_range(lo: int, hi: int, where: str) -> None:
    """The smallest and largest label against [0, MAX_CLASSES)."""
    if lo < 0 or hi >= MAX_CLASSES:
        raise UsageError(f"{where} must be integers 0..C-1 with C <= {MAX_CLASSES}, found {lo if lo < 0 else hi}; "
                         "renumber the classes 0..C-1 (e.g. numpy.unique(y, return_inverse=True))")


def check_inputs(train: Features, test: Features) -> None:
    """Reject, with one line (UsageError), what no protocol can evaluate; O(N), reads labels but not features."""
    for name, f in (("train", train), ("test", test)):
        if f.x.ndim != 2:
            raise UsageError(f"{name} features must be a 2-D array (N, D), got shape {tuple(f.x.shape)}")
        if f.y.ndim != 1 or len(f.y) != len(f.x):
            raise UsageError(f"{name} labels must be a 1-D array with one label per row of x "
                             f"({len(f.x)} rows), got shape {tuple(f.y.shape)}")
        if len(f.x) == 0:
            raise UsageError(f"{name} split is empty; it needs at least one sample")
    if train.x.shape[1] != test.x.shape[1]:
        raise UsageError(f"feature dimensions differ: train has {train.x.shape[1]}, test has {test.x.shape[1]}")
    for name, f in (("train", train), ("test", test)):
        check_labels(f.y, name, f.num_classes)
    classes = max(train.num_classes, test.num_classes)
    if classes > len(train) + len(test):
        raise UsageError(f"labels must be 0..C-1 with C at most the number of samples: C={classes} for "
                         f"{len(train) + len(test)} samples; renumber the classes 0..C-1")


def check_features(train: Features, test: Features) -> None:
    """``check_inputs``, and what features from files must also be: finite, test labels among the C classes of
    train, and every class with a training sample."""
    check_inputs(train, test)
    for name, f in (("train", train), ("test", test)):
        bad = _nonfinite_rows(f.x)
        if bad:
            raise UsageError(f"{name} features contain NaN or inf in {bad} row(s); fix or drop them")
    classes = int(train.y.max()) + 1
    lo, hi = int(test.y.min()), int(test.y.max())
    if hi >= classes:
        raise UsageError(f"test labels must be 0..C-1 with C={classes} classes seen in train, found {lo}..{hi}")
    missing = np.flatnonzero(np.bincount(train.y.cpu().numpy(), minlength=classes) == 0)
    if len(missing):
        raise UsageError(f"train labels must cover 0..C-1; class(es) {missing[:5].tolist()} have no train sample")


def _nonfinite_rows(x: torch.Tensor) -> int:
    """Rows holding NaN or inf, read in blocks of about 16M elements (a mask of all of x could be gigabytes)."""
    rows = max(1, (1 << 24) // max(1, x.shape[1]))
    return sum(int((~torch.isfinite(x[i:i + rows])).any(1).sum()) for i in range(0, len(x), rows))


def validated(protocol: Callable) -> Callable:
    """Decorate a protocol to run ``check_inputs`` first: its labels are then safe to count and index by."""

    @functools.wraps(protocol)
    def wrapper(train: Features, test: Features, **settings):
        check_inputs(train, test)
        return protocol(train, test, **settings)

    return wrapper


# Below this many elements per operation a CPU op takes well under a millisecond, and waking a second OpenMP
# thread costs more than it saves; on a shared, loaded machine a parallel region can wait a whole scheduler
# slice for it (results/benchmarks/linear-probe.md).
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


def threads_by_size(size: Callable[[Features, Features], int]) -> Callable[[Callable], Callable]:
    """Decorate a protocol to run single-threaded when ``size(train, test)`` (elements of its typical operation)
    is small, see ``threads_for``. Eigendecompositions and small products inside LAPACK/BLAS suffer the same
    wake-up cost as element-wise operations."""

    def decorate(protocol: Callable) -> Callable:
        @functools.wraps(protocol)
        def wrapper(train: Features, test: Features, **settings):
            with threads_for(size(train, test), settings.get("device", "cpu")):
                return protocol(train, test, **settings)

        return wrapper

    return decorate
