"""The method interface: everything the harness may ask of a method is declared here, and nothing else.

A method is an ``nn.Module`` with
- ``encoder``: images (N, C, H, W) -> features (N, D); the only thing protocols ever see (as tensors);
- ``views``: the augmented views the loop feeds it (a tuple of ViewConfig, possibly empty);
- ``training_step(batch) -> dict`` with a scalar ``"loss"`` (plus anything worth logging), when it trains by SGD;
- ``fit(images, mean, std)``, when it is fitted in closed form on the training images instead;
- ``on_step_end(step, total)``: EMA updates, queues, centers (default: nothing).

Class-level declarations (read without building the method): ``Config`` (the method's idea: temperatures,
heads, momentum), ``paper_recipe`` (the engineering its paper used), ``trained_by``, ``required_backbone``,
``search_space``, ``ablations``, and the suites it belongs to (``quick_budget``, ``ci_datasets``). Optional
capabilities are the mixins ``TextTower`` (zero-shot, retrieval) and ``Decoder`` (reconstruction pictures);
the harness asks ``isinstance``. ``tests/test_method_interface.py`` checks every registered method against this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from bench.core.errors import UsageError
from methods import METHODS
from methods.backbones import build_backbone
from methods.spec import UNIFIED_RECIPE, Ablation, Knob, Recipe, ViewConfig, check
from methods.vit import ViT

TrainedBy = Literal["sgd", "fit", "none"]


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


@dataclass(frozen=True)
class NoConfig:
    """The Config of a method without options."""


class Method(nn.Module):
    Config: ClassVar[type] = NoConfig
    paper_recipe: ClassVar[Recipe] = UNIFIED_RECIPE
    # sgd: the loop trains it; fit: ``fit`` once on the training images (K-Means features); none: the floors.
    trained_by: ClassVar[TrainedBy] = "sgd"
    # The backbone it must have whatever the suite asks (MAE needs a ViT's patch tokens); None: any.
    required_backbone: ClassVar[str | None] = None
    # Its own search knobs (repbench search adds the shared ones its Config has: temperature, crops, jitter).
    search_space: ClassVar[tuple[Knob, ...]] = ()
    # Ablations its paper ran, by grid name (repbench ablate --grid NAME).
    ablations: ClassVar[Mapping[str, Ablation]] = {}
    # In the quick search and ablation budget: the methods whose papers' ablations are repeated, and the
    # supervised reference.
    quick_budget: ClassVar[bool] = False
    # Datasets on which the CI regression suite (repbench check) runs it.
    ci_datasets: ClassVar[tuple[str, ...]] = ()
    # Reads batch.labels: then it trains on the labelled images only (never on STL-10's unlabeled split, label -1).
    uses_labels: ClassVar[bool] = False

    cfg: Any
    encoder: nn.Module
    views: tuple[ViewConfig, ...] = ()

    def __init__(self, cfg: Any) -> None:
        """``cfg``: the method's resolved Config (what the record stores as method_config)."""
        super().__init__()
        self.cfg = cfg

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not train by SGD")

    def fit(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Closed-form fit on the uint8 training images (N, C, H, W) with their per-channel mean/std."""
        raise NotImplementedError(f"{type(self).__name__} is not fitted in closed form")

    def on_step_end(self, step: int, total: int) -> None:
        """Called after each optimiser step; ``step`` counts from 1 to ``total``."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding the loss sees (by default the encoder's output)."""
        return self.encoder(images)

    def collapse_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the collapse watchdog measures (bench/collapse.py): ``embedding`` (N, D), the raw output the loss
        sees (``embed``); a method with softmax targets adds ``teacher_probs`` and ``student_probs`` (N, K) as its
        loss forms them."""
        return {"embedding": self.embed(images)}

    def extra_metrics(self, test_images: torch.Tensor) -> dict[str, dict[str, Any]]:
        """Method-specific evaluation (e.g. reconstruction MSE); empty by default."""
        return {}

    def float32_on_cpu(self) -> bool:
        """True when bfloat16 autocast would slow this model down on a CPU: a ViT inside (see vit.py)."""
        return any(isinstance(m, ViT) for m in self.modules())


class TextTower(ABC):
    """A method with a text encoder beside its image encoder (CLIP): zero-shot and retrieval use these.

    Embeddings are in the joint space and NOT L2-normalised (callers normalise, as CLIP's own ``encode_*``).
    """

    caption_source: str  # "dataset", or "class-name fallback" when the dataset has no captions
    train_tokens: torch.Tensor | None  # (N_train, L) token ids aligned with the training images, or None

    @abstractmethod
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """M strings -> (M, D)."""

    @abstractmethod
    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features (N, D_enc) -> (N, D)."""

    @abstractmethod
    def scale(self) -> torch.Tensor:
        """The logit multiplier of cosine similarities."""


class Decoder(ABC):
    """A method that decodes images back from what it encodes (repbench plot reconstructions)."""

    blend_label: str = "decoded blend A→B"

    @abstractmethod
    def reconstruct(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Rows of the picture after the input: name -> (N, C, H, W) normalised images."""

    @abstractmethod
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        """Decoded blends between two images' codes, (steps, C, H, W)."""


def make_config(cls: type[Method], overrides: dict[str, Any]):
    """The method's Config with ``overrides`` applied (JSON lists become tuples); an unknown key, or a value its
    field's annotation or declaration (``methods.spec.opt``) refuses, is a user error, raised before anything is
    built."""
    cfg = cls.Config()
    valid = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UsageError(
            f"method option(s) {', '.join(unknown)} not understood; valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    check(cfg, f"{method_name(cls)} option")
    return cfg


def method_name(cls: type[Method]) -> str:
    """The name ``cls`` is registered under (what --method takes); its class name when it is not registered."""
    same_module = (n for n in METHODS if METHODS.module_of(n) == cls.__module__)
    return next((n for n in same_module if METHODS.get(n) is cls), cls.__name__)


def config_defaults(cls: type[Method]) -> dict[str, Any]:
    """The Config's field defaults by name."""
    return dict(vars(cls.Config()))
