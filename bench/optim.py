"""Optimisers and schedules the presets choose from: SGD, LARS, AdamW; linear warm-up then cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.config import Recipe


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as SimCLR/BYOL use it.

    SGD with momentum whose per-tensor step is scaled by ``eta * ||w|| / ||g + wd * w||``. Groups with
    ``lars=False`` (biases, norm layers: SimCLR App. B.1 excludes them) take a plain SGD step without decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay (and LARS-adapt) weight matrices only; biases and norm parameters (ndim <= 1) are exempt."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


def build_optimizer(model: nn.Module, recipe: Recipe, batch_size: int) -> torch.optim.Optimizer:
    lr = recipe.scaled_lr(batch_size)
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        for g in groups:
            g.pop("lars", None)
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        for g in groups:
            g.pop("lars", None)
        return torch.optim.AdamW(groups, lr=lr, betas=recipe.betas)
    if recipe.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=recipe.momentum)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based): linear warm-up, then cosine to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int, steps_per_epoch: int):
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    # Short budgets cannot afford the paper's warm-up; cap it at a tenth of training.
    warmup = min(warmup, total_steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup, recipe.schedule))
