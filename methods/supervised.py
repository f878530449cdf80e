"""Supervised cross-entropy on one augmented view: the reference every self-supervised number is read against.

Features are the backbone's output, before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Batch, Context, Method
from methods.spec import MAX_JITTER, Knob, Recipe, ViewConfig, opt


@dataclass(frozen=True)
class SupervisedConfig:
    label_smoothing: float = opt(0.0, ge=0, le=1)
    crop_scale_min: float = opt(0.2, gt=0, le=1)
    jitter_strength: float = opt(0.0, ge=0, le=MAX_JITTER)  # standard supervised recipes use crop + flip only


class Supervised(Method):
    Config = SupervisedConfig
    # He et al. 2016 (ResNet): SGD momentum 0.9, lr 0.1 x bs/256, wd 1e-4.
    paper_recipe = Recipe(optimizer="sgd", lr=0.1, weight_decay=1e-4)
    search_space = (Knob("label_smoothing", 0.0, 0.2),)
    quick_budget = True
    # The supervised reference: labels, one view, no state across steps.
    ci_datasets = ("digits",)
    uses_labels = True

    def __init__(self, ctx: Context, cfg: SupervisedConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        self.classifier = nn.Linear(self.encoder.feature_dim, ctx.num_classes)
        self.views = (ViewConfig(scale=(cfg.crop_scale_min, 1.0), strength=cfg.jitter_strength, gray_p=0.0),)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.encoder(batch.views[0]))
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(1) == batch.labels).float().mean()
        return {"loss": loss, "train_acc": acc.detach()}
