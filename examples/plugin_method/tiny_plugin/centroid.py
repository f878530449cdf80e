"""Nearest class mean on frozen, L2-normalised features: a protocol as repbench sees one (protocols/base.py),
registered with the limits the harness checks before training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protocols import LIMITS, PROTOCOLS
from protocols.base import Features, Metrics
from protocols.limits import Shape

KEY = "nearest-centroid"


def limits(shape: Shape) -> dict[str, str]:
    """Nothing this protocol cannot produce: every class with a training sample has a mean."""
    return {KEY: ""}


def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu") -> Metrics:
    tx, sx = F.normalize(train.x.float(), dim=1), F.normalize(test.x.float(), dim=1)
    classes = max(train.num_classes, test.num_classes)
    means = torch.zeros(classes, tx.shape[1]).index_add_(0, train.y, tx)
    pred = (sx @ F.normalize(means, dim=1).T).argmax(1)
    return {KEY: {"top1": (pred == test.y).float().mean().item(), "normalised": True}}


PROTOCOLS.register(KEY)(evaluate)
LIMITS.register(KEY)(limits)
