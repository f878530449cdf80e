"""The plain types a method file declares itself with, and the harness reads: its recipe, its views, its
search knobs and its named ablations. Frozen dataclasses, no behaviour beyond small helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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


# The recipe every method shares in a fair comparison (same backbone, data and budget). SGD+momentum with
# cosine decay is what lightly's and solo-learn's CIFAR benchmarks use for most methods; lr 0.06 x bs/256 is
# lightly's SimCLR/MoCo setting.
UNIFIED_RECIPE = Recipe()


@dataclass(frozen=True)
class ViewConfig:
    """One augmented view; SimCLR's recipe by default (Chen et al. 2020, App. A).

    ``strength`` scales the colour jitter (SimCLR's s). ``size`` None keeps the dataset's size.
    Colour-only operations (saturation, hue, grayscale) are skipped on single-channel images.
    """

    size: int | None = None
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    strength: float = 0.5
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


@dataclass(frozen=True)
class Knob:
    """One method-config field to search: a float range (optionally log), an integer range, or choices."""

    field: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def around(self, default: Any) -> Knob:
        """The same knob with its range or choices widened to contain ``default``."""
        if self.choices is not None:
            return self if default in self.choices else replace(self, choices=(*self.choices, default))
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return replace(self, choices=(default,))
        if self.log and default <= 0:
            return self
        return replace(self, low=min(self.low, default), high=max(self.high, default))


@dataclass(frozen=True)
class Cell:
    """One cell of an ablation: a label and the method-config values it changes."""

    label: str
    args: Mapping[str, Any] = field(default_factory=dict)


def cell(label: str, **args: Any) -> Cell:
    return Cell(label, args)


@dataclass(frozen=True)
class Ablation:
    """A named ablation a method's paper ran: its cells, the claim being repeated, and the recipe it ran under."""

    cells: tuple[Cell, ...]
    claim: str
    recipe: str = "paper"  # paper: as the paper ablated; unified: the shared recipe
