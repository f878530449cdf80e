"""What every protocol sees: frozen features and labels, never a model.

A protocol is a function ``evaluate(train, test, **settings) -> dict[str, dict]``. It returns
one entry per result key (``"knn"``, ``"knn_k200"``, ``"linear"``...), each a flat dict holding
the settings that produced the values beside the values (fractions 0..1), so a number can never
be separated from how it was made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.registry import Registry

Metrics = dict[str, dict[str, Any]]
Protocol = Callable[..., Metrics]

PROTOCOLS: Registry[Protocol] = Registry("protocol")


@dataclass
class Features:
    """Frozen features of one split.

    Shape: x (N, D) float32, y (N,) int64 with classes 0..C-1.
    ``meta`` carries extras a protocol may need (e.g. ``class_text`` (C, D) for zero-shot,
    ``num_classes``) and how the features were made (layer, split, checkpoint).
    """

    x: torch.Tensor
    y: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes", int(self.y.max()) + 1 if len(self.y) else 0))

    def __len__(self) -> int:
        return len(self.y)
