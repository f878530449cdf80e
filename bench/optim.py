"""Optimisers and schedules the presets choose from: SGD, LARS, AdamW; linear warm-up, then cosine, step or constant."""

from __future__ import annotations

import math

import torch
from torch import nn

from methods.spec import Recipe


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


def param_groups(model: nn.Module, weight_decay: float, recipe: Recipe | None = None) -> list[dict]:
    """Decay (and LARS-adapt) weight matrices only; biases and norm parameters (ndim <= 1) are exempt unless the
    recipe's ``decay_norm_bias`` says otherwise.

    With a recipe, parameters named by ``recipe.fixed_lr`` get groups of their own (``fixed_lr: True``, the
    scheduler leaves their rate alone), and the exempt groups' rate is scaled by ``recipe.no_decay_lr_scale``
    (``lr_scale`` in the group).
    """
    fixed = tuple(recipe.fixed_lr) if recipe is not None else ()
    scale = recipe.no_decay_lr_scale if recipe is not None else 1.0
    exempt_small = not (recipe is not None and recipe.decay_norm_bias)
    buckets: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((exempt_small and p.ndim <= 1, name.startswith(fixed) if fixed else False), []).append(p)
    groups = []
    for (exempt, is_fixed), params in sorted(buckets.items()):
        group = {"params": params, "weight_decay": 0.0 if exempt else weight_decay, "decay": not exempt,
                 "fixed_lr": is_fixed, "lr_scale": scale if exempt else 1.0}
        if exempt:
            group["lars"] = False
        groups.append(group)
    return groups


def build_optimizer(model: nn.Module, recipe: Recipe, batch_size: int) -> torch.optim.Optimizer:
    lr = recipe.scaled_lr(batch_size)
    groups = param_groups(model, recipe.weight_decay, recipe)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if recipe.optimizer in ("sgd", "adamw"):
        for g in groups:
            g.pop("lars", None)
        # Fused: one kernel per step, and it skips the update on the device when the loop says a loss was not
        # finite (bench/steps.py), with no host synchronisation.
        if recipe.optimizer == "sgd":
            return with_momentum_buffers(torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, fused=True))
        return torch.optim.AdamW(groups, lr=lr, betas=recipe.betas, fused=True)
    if recipe.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=recipe.momentum)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def with_momentum_buffers(opt: torch.optim.SGD) -> torch.optim.SGD:
    """Zero momentum buffers for every parameter from the start. Fused SGD takes a group's buffers together and
    refuses a mix of present and absent ones, which arises when a parameter gets its first gradient late (DINO's
    last layer and SwAV's prototypes are frozen at first); with dampening 0 a zero buffer gives the first update
    exactly (momentum x 0 + gradient)."""
    if opt.defaults["momentum"] and not opt.defaults["dampening"]:
        for g in opt.param_groups:
            for p in g["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: tuple[float, ...] = (0.6, 0.8)) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based): linear warm-up, then cosine to 0,
    constant, or ``step`` (x0.1 at each milestone, a fraction of all ``total`` steps: MoCo v1's and InstDisc's
    x0.1 at epochs 120 and 160 of 200 are (0.6, 0.8))."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 0.1 ** sum(step >= round(m * total) for m in milestones)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int, steps_per_epoch: int):
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    # Short budgets cannot afford the paper's warm-up; cap it at a tenth of training.
    warmup = min(warmup, total_steps // 10)

    def scheduled(s: int) -> float:
        return lr_factor(s, total_steps, warmup, recipe.schedule, recipe.milestones)

    # SimSiam (Sec. 4.2) keeps the predictor's rate fixed: those groups get a constant factor.
    factors = [(lambda s: 1.0) if g.get("fixed_lr") else scheduled for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, factors)


def weight_decay_at(step: int, total: int, recipe: Recipe) -> float:
    """DINO's weight-decay schedule: a cosine from ``weight_decay`` to ``final_weight_decay`` over training."""
    if recipe.final_weight_decay is None:
        return recipe.weight_decay
    start, end = recipe.weight_decay, recipe.final_weight_decay
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def apply_recipe_step(opt: torch.optim.Optimizer, params, step: int, total: int, recipe: Recipe) -> None:
    """The per-step engineering after backward and before the update: per-parameter gradient clipping and
    the weight-decay schedule (both off in the unified recipe)."""
    if recipe.clip_grad > 0:
        # DINO's utils.clip_gradients: each parameter's gradient norm on its own, not the global norm.
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_(p, recipe.clip_grad)
    if recipe.final_weight_decay is not None:
        wd = weight_decay_at(step, total, recipe)
        for g in opt.param_groups:
            if g.get("decay"):
                g["weight_decay"] = wd
