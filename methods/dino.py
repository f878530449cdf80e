"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation without labels: a student (backbone + DINO head) matches the output distribution
of a teacher that is an EMA of the student (momentum 0.996 -> 1, cosine). Teacher outputs are
centred (center momentum 0.9) and sharpened (teacher temperature warmed up linearly 0.04 -> 0.07,
student 0.1); both together avoid collapse. Multi-crop: 2 global views (the teacher sees only these)
plus ``n_local_crops`` small local views, all for the student; views of one resolution are batched.
The DINO head is an MLP (GELU; BatchNorm too on a convnet, see ``head_bn``) to an L2-normalised bottleneck and a
weight-normalised last layer with its gain fixed to 1; that layer is frozen for the first ``freeze_last_layer`` of
training.

Protocols see the **teacher** backbone (the paper evaluates the teacher, which is better throughout
training, Sec. 5.2 / Fig. 6); ``self.student_backbone`` is the network the optimiser trains. Works with
any backbone exposing ``feature_dim`` (ViT or CNN). The paper recipe has the weight-decay cosine 0.04 -> 0.4
and per-parameter gradient clipping at 3.0 (both applied by the loop from the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from bench.core import dist as cdist
from methods.base import Batch, Context, Method
from methods.ema import EMA
from methods.losses.dino import dino_loss
from methods.multicrop import forward_by_resolution, local_size
from methods.spec import MAX_CROPS, MAX_DIM, MAX_IMAGE, MAX_JITTER, MAX_TEMPERATURE, Ablation, Knob, Recipe, ViewConfig, cell, opt


@dataclass(frozen=True)
class DINOConfig:
    out_dim: int = opt(1024, ge=1, le=MAX_DIM)  # K; paper 65536, scaled to the CPU backbones like the widths below
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)  # paper 2048
    bottleneck_dim: int = opt(128, ge=1, le=MAX_DIM)  # paper 256
    # DINO's use_bn_in_head. None: on for a convnet, off for a ViT (DINO's ViT recipe). Without it a convnet's pooled
    # features (non-negative, one large shared direction) give every image nearly the same head output, so the centred
    # teacher is uniform from the first steps and stays so (measured: results/quick/README.md); lightly's ResNet
    # benchmarks put BN in DINO's head too. The record holds the resolved value.
    head_bn: bool | None = None
    norm_last_layer: bool = True  # fix the last layer's weight-norm gain to 1
    student_temp: float = opt(0.1, gt=0, le=MAX_TEMPERATURE)
    warmup_teacher_temp: float = opt(0.04, gt=0, le=MAX_TEMPERATURE)
    teacher_temp: float = opt(0.07, gt=0, le=MAX_TEMPERATURE)
    teacher_temp_warmup: float = opt(0.1, ge=0, le=1)  # fraction of training (the paper: 30 of 300 epochs)
    center_momentum: float = opt(0.9, ge=0, le=1)  # 1: no centering (the center stays zero)
    momentum: float = opt(0.996, ge=0, le=1)  # teacher EMA, cosine to 1
    freeze_last_layer: float = opt(0.01, ge=0, le=1)  # fraction of training (the code: 1 of 100 epochs)
    n_local_crops: int = opt(8, ge=0, le=MAX_CROPS)
    global_scale: tuple[float, float] = opt((0.4, 1.0), gt=0, le=1)
    local_scale: tuple[float, float] = opt((0.05, 0.4), gt=0, le=1)
    local_size_ratio: float = opt(96 / 224, gt=0, le=1)
    local_min_size: int = opt(8, ge=1, le=MAX_IMAGE)
    # ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8; the paper's saturation is 0.2.
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer to K outputs (DINO's DINOHead)."""

    def __init__(self, in_dim: int, cfg: DINOConfig) -> None:
        super().__init__()
        dims = [in_dim, cfg.hidden_dim, cfg.hidden_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if cfg.head_bn else []) + [nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(cfg.bottleneck_dim, cfg.out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad = not cfg.norm_last_layer

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        w = self.last_layer.weight
        # A detached weight gets no gradient, so the optimiser skips it (DINO's cancel_gradients_last_layer).
        return F.linear(x, w.detach() if freeze_last_layer else w)


# Sharpening off: the teacher's temperature (and its warm-up start) at the student's.
NO_SHARPENING = {"teacher_temp": DINOConfig.student_temp, "warmup_teacher_temp": DINOConfig.student_temp}


class DINO(Method):
    Config = DINOConfig
    # Paper Sec. 4 / App.: AdamW, lr 5e-4 x bs/256, wd cosine 0.04 -> 0.4, 10 warm-up epochs, clip 3.0.
    paper_recipe = Recipe(optimizer="adamw", lr=5e-4, weight_decay=0.04, warmup_epochs=10, final_weight_decay=0.4,
                          clip_grad=3.0)
    search_space = (Knob("teacher_temp", 0.02, 0.1, log=True), Knob("center_momentum", choices=(0.8, 0.9, 0.99)),
                    Knob("momentum", choices=(0.99, 0.996, 0.999)))
    # Centering off is center_momentum=1: the center is a zero buffer that then never moves.
    ablations = {"dino-centering": Ablation(
        cells=(cell("center+sharpen (paper)"), cell("no centering", center_momentum=1.0),
               cell("no sharpening", **NO_SHARPENING), cell("neither", center_momentum=1.0, **NO_SHARPENING),
               cell("no multi-crop", n_local_crops=0)),
        claim="Caron et al. 2021 Sec. 5.3 / Fig. 7: centering alone or sharpening alone collapses, both are needed: "
              "without sharpening the teacher entropy rises to log K (uniform), without centering it falls to 0 (one "
              "dimension dominates); KL(teacher || student) goes to 0 in both")}
    quick_budget = True

    def __init__(self, ctx: Context, cfg: DINOConfig) -> None:
        if cfg.head_bn is None:
            cfg = replace(cfg, head_bn=not ctx.backbone.startswith("vit"))
        super().__init__(cfg)
        self.total_steps = ctx.total_steps
        self.student_backbone = ctx.make_backbone()
        self.student_head = DINOHead(self.student_backbone.feature_dim, cfg)
        self.teacher = EMA(self.student_backbone, self.student_head, momentum=cfg.momentum, final=1.0)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # Host copies of the counters the step reads: int() of a device buffer at every step would wait on the GPU.
        # Read from the buffers once after a build or a load_state_dict, then kept in step by on_step_end.
        self._host: dict[str, int] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module._host.clear())
        self._batch_center: torch.Tensor | None = None
        jitter = dict(strength=cfg.jitter_strength)
        small = local_size(ctx.image_size, cfg.local_size_ratio, cfg.local_min_size, self.student_backbone)
        self.views = (ViewConfig(scale=cfg.global_scale, blur_p=1.0, **jitter),
                      ViewConfig(scale=cfg.global_scale, blur_p=0.1, solarize_p=0.2, **jitter),
                      *[ViewConfig(size=small, scale=cfg.local_scale, blur_p=0.5, **jitter)] * cfg.n_local_crops)

    @property
    def encoder(self) -> nn.Module:
        return self.teacher.target[0]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """What the teacher's softmax sees: centred teacher outputs."""
        return self.teacher(images) - self.center

    def collapse_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw (uncentred) teacher outputs, and both softmaxes as the loss forms them (center, temperatures
        at the current step). In uniform collapse every raw output is the center, and the centred ones are the
        round-off left around it, which still looks spread: the embedding watched is the raw one."""
        raw = self.teacher(images).float()
        student = self.student_head(self.student_backbone(images)).float()
        teacher_probs = F.softmax((raw - self.center) / self.teacher_temp(self.steps_so_far()), dim=-1)
        return {"embedding": raw, "teacher_probs": teacher_probs,
                "student_probs": F.softmax(student / self.cfg.student_temp, dim=-1)}

    def steps_so_far(self) -> int:
        if "steps" not in self._host:
            self._host["steps"] = int(self.steps_done)
        return self._host["steps"]

    def teacher_temp(self, step: int) -> float:
        cfg = self.cfg
        warmup = round(cfg.teacher_temp_warmup * self.total_steps)
        frac = min(1.0, step / warmup) if warmup > 0 else 1.0
        return cfg.warmup_teacher_temp + frac * (cfg.teacher_temp - cfg.warmup_teacher_temp)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, views = self.cfg, batch.views
        step = self.steps_so_far()
        freeze = step < round(cfg.freeze_last_layer * self.total_steps)
        student = self.student_head(forward_by_resolution(self.student_backbone, views), freeze).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher(torch.cat(views[:2])).chunk(2)
        # The center follows the global batch's mean (equal rows per rank: the mean of the ranks' means).
        self._batch_center = cdist.reduce_mean_detached(torch.cat(teacher).float().mean(dim=0, keepdim=True))
        loss = dino_loss(student, teacher, self.center, cfg.student_temp, self.teacher_temp(step))
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        self.total_steps = total
        self.teacher.update(self.student_backbone, self.student_head, step=step, total=total)
        if self._batch_center is not None:
            m = self.cfg.center_momentum
            self.center.mul_(m).add_(self._batch_center, alpha=1 - m)
        self._batch_center = None
        self.steps_done.fill_(step)
        self._host["steps"] = step
