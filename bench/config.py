"""Frozen configs. An ablation is ``dataclasses.replace``; a run is identified by its config's hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """The engineering around a method: optimiser, schedule, and the learning-rate rule.

    ``lr`` is the base rate for a batch of 256; the loop uses ``lr * batch_size / 256`` (the linear
    scaling rule of Goyal et al. 2017, used by SimCLR, MoCo v3, DINO, MAE, ...).
    """

    optimizer: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.06
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # cosine | constant | step (x0.1 at each of ``milestones``)
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of training where ``step`` multiplies the rate by 0.1
    final_weight_decay: float | None = None  # weight decay follows a cosine from weight_decay to this (DINO)
    clip_grad: float = 0.0  # > 0: clip each parameter's gradient norm to this (DINO's clip_gradients)
    fixed_lr: tuple[str, ...] = ()  # parameter-name prefixes whose rate skips the schedule (SimSiam's predictor)
    no_decay_lr_scale: float = 1.0  # base-rate multiplier for biases and norm parameters (Barlow Twins: 0.024)

    def scaled_lr(self, batch_size: int) -> float:
        return self.lr * batch_size / 256


# The recipe every method shares in a fair comparison (ARCHITECTURE.md: same backbone, data and
# budget). SGD+momentum with cosine decay is what lightly's and solo-learn's CIFAR benchmarks use
# for most methods; lr 0.06 x bs/256 is lightly's SimCLR/MoCo setting.
UNIFIED_RECIPE = Recipe()


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    backbone: str = "convnet"
    epochs: int = 1
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    recipe: Recipe = UNIFIED_RECIPE
    recipe_name: str = "unified"  # unified | paper | custom
    method_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    per_class: int | None = None  # training subset: this many images per class
    test_per_class: int | None = None
    protocols: tuple[str, ...] | None = None  # None: every registered protocol
    suite: str = "adhoc"
    deterministic: bool = False
    # bf16 autocast where bf16 is native: CUDA, or a CPU with AMX / AVX512-BF16 (protocols.features.native_bf16),
    # except on a CPU for models that run slower so (bench.train.cpu_autocast_pays: the ViT).
    amp: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A short hash of everything that changes the result (not where it is written)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_id(self) -> str:
        return f"{self.method}-{self.backbone}-{self.dataset}-s{self.seed}-{self.key()}"
