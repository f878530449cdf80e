"""The papers' linear probe: a linear head trained by SGD through the frozen backbone on augmented images,
following MoCo's ``main_lincls.py`` and MAE's ``main_linprobe.py``. It needs a model and images, so it is the
harness's, not a feature protocol (``protocols/linear.py`` is the feature-cache probe every run reports)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bench.augment import Augmenter
from bench.data import Dataset
from bench.features import extract
from bench.optim import LARS, lr_factor
from methods.spec import ViewConfig
from protocols.base import Metrics, classification_metrics


@dataclass(frozen=True)
class PaperRecipe:
    """A published linear-probe recipe: SGD through the frozen backbone, on augmented images."""

    optimizer: str  # sgd | lars
    lr: float  # base rate for a batch of 256 when ``scale_lr``
    scale_lr: bool
    epochs: int
    batch_size: int
    schedule: str  # step (x0.1 at 60% and 80% of training) | cosine (after linear warm-up)
    warmup_epochs: int
    head_bn: bool  # BatchNorm1d(affine=False, eps=1e-6) before the linear layer
    momentum: float = 0.9
    weight_decay: float = 0.0
    init_std: float = 0.01


PAPER_RECIPES = {
    # MoCo v1/v2 main_lincls.py: SGD lr 30, batch 256, 100 epochs, x0.1 at 60 and 80, wd 0, fc ~ N(0, 0.01).
    "moco": PaperRecipe("sgd", 30.0, False, 100, 256, "step", 0, head_bn=False),
    # MAE main_linprobe.py: LARS, base lr 0.1 x bs/256, batch 16384, 90 epochs (10 warm-up) cosine, wd 0,
    # head = BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01).
    "mae": PaperRecipe("lars", 0.1, True, 90, 16384, "cosine", 10, head_bn=True),
}


def linear_probe_paper(encoder: torch.nn.Module, dataset: Dataset, *, recipe: str = "mae", epochs: int | None = None,
                       batch_size: int | None = None, lr: float | None = None, crop_scale=(0.08, 1.0),
                       device: str | torch.device = "cpu", seed: int = 0) -> Metrics:
    """``linear_paper``: a linear head trained by SGD on the frozen encoder, with RandomResizedCrop + flip.

    The encoder stays in eval mode (BatchNorm statistics frozen, as MoCo's ``model.eval()``) and is
    re-run on fresh augmentations every step, as the papers do (no feature cache). Scored once, after
    the last epoch, on the un-augmented test images (never the best epoch on test, as DINO reports).
    ``epochs``, ``batch_size`` and the base ``lr`` override the
    recipe (small runs: MAE's rate assumes batch 16384 and 90 epochs; an override is recorded as such);
    ``crop_scale`` is RandomResizedCrop's area range (torchvision's and the papers' (0.08, 1) by default).
    """
    if recipe not in PAPER_RECIPES:
        raise ValueError(f"unknown paper recipe {recipe!r}; choose one of {', '.join(PAPER_RECIPES)}")
    rc = PAPER_RECIPES[recipe] if lr is None else replace(PAPER_RECIPES[recipe], lr=lr)
    dev = torch.device(device)
    epochs = epochs or rc.epochs
    bs = min(batch_size or rc.batch_size, len(dataset.train_y))
    mean, std = dataset.mean_std()
    was_training = encoder.training
    grads = [p.requires_grad for p in encoder.parameters()]
    encoder.eval()
    encoder.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # kornia draws its crops from the global generator
            head, lr, steps, loss = _train_head(encoder, dataset, rc, epochs, bs, mean, std, dev, seed, crop_scale)
        with torch.no_grad():
            logits = head(extract(encoder, dataset.test_x, mean, std, dev).to(dev)).cpu()
    finally:
        encoder.train(was_training)
        for p, flag in zip(encoder.parameters(), grads, strict=True):
            p.requires_grad_(flag)
    c = dataset.num_classes
    scores = classification_metrics(logits, dataset.test_y, c)
    return {"linear_paper": {
        "top1": scores["top1"], "top5": scores["top5"], "recipe": recipe, "optimizer": rc.optimizer, "lr": lr, "base_lr": rc.lr,
        "lr_overridden": rc.lr != PAPER_RECIPES[recipe].lr,
        "batch_size": bs, "epochs": epochs, "steps": steps, "schedule": rc.schedule, "warmup_epochs": rc.warmup_epochs,
        "weight_decay": rc.weight_decay, "head_bn": rc.head_bn,
        "augment": f"RandomResizedCrop({crop_scale[0]:g}-{crop_scale[1]:g}) + flip",
        "backbone": "frozen, eval mode", "selection": "last epoch", "final_loss": loss,
        "n_train": len(dataset.train_y), "n_test": len(dataset.test_y), "num_classes": c, "seed": seed,
    }}


def _train_head(encoder, dataset, rc: PaperRecipe, epochs: int, bs: int, mean, std, dev, seed: int, crop_scale):
    """The recipe's optimiser and schedule on a fresh head; returns (head in eval mode, lr, steps, last loss)."""
    crop = ViewConfig(scale=tuple(crop_scale), jitter_p=0.0, gray_p=0.0, strength=0.0)
    augment = Augmenter((crop,), dataset.channels, dataset.image_size, mean, std, dev)
    with torch.no_grad():
        dim = encoder(augment(dataset.train_x[:2].to(dev))[0]).shape[1]
    linear = torch.nn.Linear(dim, dataset.num_classes)
    if rc.head_bn:
        torch.nn.init.trunc_normal_(linear.weight, std=rc.init_std)
    else:
        torch.nn.init.normal_(linear.weight, std=rc.init_std)
    torch.nn.init.zeros_(linear.bias)
    head = (torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if rc.head_bn
            else linear).to(dev)
    lr = rc.lr * bs / 256 if rc.scale_lr else rc.lr
    groups = [{"params": [linear.weight], "weight_decay": rc.weight_decay},
              {"params": [linear.bias], "weight_decay": 0.0}]
    if rc.optimizer == "lars":
        groups[1]["lars"] = False  # biases take a plain SGD step, as MAE's LARS excludes 1-D parameters
        opt = LARS(groups, lr=lr, momentum=rc.momentum)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=rc.momentum)
    g = torch.Generator().manual_seed(seed)
    per_epoch = len(dataset.train_y) // bs
    # A shortened run keeps the recipe's shape: warm-up and step milestones scale with the epochs.
    total, warmup = per_epoch * epochs, round(per_epoch * rc.warmup_epochs * epochs / rc.epochs)
    step, loss = 0, math.nan
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(dataset.train_y), generator=g)
        for i in range(per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            if rc.schedule == "step":
                factor = 0.1 ** sum(epoch >= m * epochs for m in (0.6, 0.8))
            else:
                factor = lr_factor(step, total, warmup, "cosine")
            for grp in opt.param_groups:
                grp["lr"] = lr * factor
            with torch.no_grad():
                feats = encoder(augment(dataset.train_x[idx].to(dev))[0])
            batch_loss = F.cross_entropy(head(feats), dataset.train_y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            step, loss = step + 1, float(batch_loss.detach())
    return head.eval(), lr, step, loss
