"""The method interface every file in methods/ implements, and the registries.

A method is an ``nn.Module`` with
- ``encoder``: images (N, C, H, W) -> features (N, D); the only thing protocols ever see;
- ``views``: the augmented views the loop must feed it (a tuple of ViewConfig, possibly empty);
- ``training_step(batch) -> dict`` with a scalar ``"loss"`` (plus anything worth logging);
- ``on_step_end(step, total)``: EMA updates, queues, centers (default: nothing).

Methods are registered by name in ``METHODS``; each class carries its own ``Config`` dataclass
(the method's idea: temperatures, heads, momentum) and ``paper_recipe`` (the engineering its
paper used). The training loop owns the optimiser and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from bench.augment import ViewConfig
from bench.config import UNIFIED_RECIPE, Recipe
from bench.errors import UsageError
from bench.registry import Registry


@dataclass(frozen=True)
class Context:
    """What a method needs to know about the data and backbone to build itself."""

    in_channels: int
    image_size: int
    num_classes: int
    num_train: int
    backbone: str = "convnet"
    backbone_args: dict[str, Any] | None = None
    total_steps: int = 1
    # Training captions, for methods with a text tower (their tokeniser's vocabulary comes from these).
    train_text: list[str] | None = None
    class_names: tuple[str, ...] = ()

    def make_backbone(self) -> nn.Module:
        from methods.backbones import build_backbone

        return build_backbone(self.backbone, self.in_channels, self.image_size, **(self.backbone_args or {}))


@dataclass
class Batch:
    """One training batch, already on the training device.

    Shape: views: V tensors (N, C, H_v, W_v) float, normalised; images (N, C, H, W) the
    un-augmented images, normalised; labels (N,) int64; index (N,) int64 positions in the
    training set (memory banks need them); text (N, L) int64 token ids when the dataset has captions.
    """

    views: list[torch.Tensor]
    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    text: torch.Tensor | None = None


class Method(nn.Module):
    Config: ClassVar[type] = object
    paper_recipe: ClassVar[Recipe] = UNIFIED_RECIPE
    # False for the floors (raw pixels, random init): the loop skips training entirely.
    trainable: ClassVar[bool] = True
    # Uses a fit on the whole training set instead of SGD (e.g. K-Means features).
    fits_without_sgd: ClassVar[bool] = False

    encoder: nn.Module
    views: tuple[ViewConfig, ...] = ()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_step_end(self, step: int, total: int) -> None:
        """Called after each optimiser step; ``step`` counts from 1 to ``total``."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding the collapse watchdog watches (the loss's input, by default the encoder's)."""
        return self.encoder(images)

    def extra_metrics(self, test_images: torch.Tensor) -> dict[str, dict[str, Any]]:
        """Method-specific evaluation (e.g. reconstruction MSE); empty by default."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def make_config(cls: type[Method], overrides: dict[str, Any]):
    """The method's Config with ``overrides`` applied; unknown keys are a user error."""
    cfg = cls.Config()
    valid = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UsageError(
            f"method option(s) {', '.join(unknown)} not understood; valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    for key, value in overrides.items():
        default = getattr(cfg, key)
        if not _same_kind(default, value):
            raise UsageError(f"method option {key}={value!r} should be a {type(default).__name__} like its default {default!r}")
    return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def _same_kind(default: Any, value: Any) -> bool:
    """JSON-parsed overrides against the dataclass default's type (ints pass for floats, lists for tuples)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))
