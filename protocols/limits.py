"""What decides whether a protocol can produce an entry, and the one shape of an entry it cannot produce.

The rule (when an entry is skipped, when a run is refused) is in protocols/base.py's docstring. Here: the data's
``Shape`` (known from the labels before any feature exists, and D once features do), ``skipped`` entries, and the
memory budget each protocol's stated formula is checked against before it allocates anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.core.errors import UsageError
from protocols.base import Features

try:
    import psutil
except ImportError:  # optional: without it, the free pages os.sysconf reports (page cache not counted: lower)
    psutil = None

MEMORY_ENV = "REPBENCH_MEMORY_BUDGET"
MEMORY_FRACTION = 0.5  # of the memory available when a protocol starts: the rest is the caller's and the OS's
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Shape:
    """The sizes a protocol's limits depend on. train_counts: (C,) training samples of each class 0..C-1;
    dim: D, or None before features exist (before training), when only the sample counts can be checked."""

    train_counts: np.ndarray
    n_test: int
    dim: int | None = None
    device: str = "cpu"

    @property
    def n_train(self) -> int:
        return int(self.train_counts.sum())

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    @classmethod
    def of_labels(cls, train_y: torch.Tensor, n_test: int, num_classes: int, dim: int | None = None,
                  device: torch.device | str = "cpu") -> Shape:
        """From labels already checked (``check_labels``: 0 <= y < num_classes <= MAX_CLASSES): O(N + C)."""
        counts = np.bincount(train_y.cpu().numpy(), minlength=num_classes)
        return cls(counts, n_test, dim, str(device))

    @classmethod
    def of(cls, train: Features, test: Features, device: torch.device | str = "cpu") -> Shape:
        c = max(train.num_classes, test.num_classes)
        return cls.of_labels(train.y, len(test), c, train.x.shape[1], device)


def skipped(reason: str) -> dict[str, Any]:
    """The entry of a result the data cannot support: only the reason, one line, never a number."""
    return {"skipped": reason}


def is_skipped(entry: Any) -> bool:
    return isinstance(entry, dict) and "skipped" in entry


def skip_all(reasons: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every key skipped, each with its own reason, or the first key's where it has none."""
    first = next((r for r in reasons.values() if r), "")
    return {key: skipped(reason or first) for key, reason in reasons.items()}


def parse_size(text: str) -> int:
    """Bytes of '16G', '512M', '1.5g', '2GiB', '1000' (units are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    size = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0.0
    if not 0 < size < 1 << 62:
        raise UsageError(f"{MEMORY_ENV}={text!r} is not a memory size; give bytes or a number with K, M, G or T "
                         f"(powers of 1024), e.g. {MEMORY_ENV}=16G")
    return int(size)


def memory_budget(device: torch.device | str = "cpu") -> tuple[int, str]:
    """(bytes a protocol may allocate, where that number comes from): $REPBENCH_MEMORY_BUDGET when set, else
    MEMORY_FRACTION of the memory available now (RAM, or the GPU's free memory for a CUDA device)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        return parse_size(text), MEMORY_ENV
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0] * MEMORY_FRACTION), f"{MEMORY_FRACTION:.0%} of the free GPU memory"
    free = psutil.virtual_memory().available if psutil is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")
    return int(free * MEMORY_FRACTION), f"{MEMORY_FRACTION:.0%} of the available RAM"


def over_budget(need: int, formula: str, device: torch.device | str) -> str:
    """'' when ``need`` bytes fit the budget, else the reason: the formula with its numbers, and the budget."""
    budget, source = memory_budget(device)
    if need <= budget:
        return ""
    return (f"needs {need:,} bytes ({human(need)}) = {formula}, over the memory budget of {human(budget)} ({source}); "
            f"reduce the feature dimension or, where more memory is free, set {MEMORY_ENV} (e.g. {MEMORY_ENV}=64G)")


def human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
