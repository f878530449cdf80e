"""MoCo v1, v2 and v3 in one file: three presets of one momentum-contrast method.

- v1 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"): a key
  encoder that is an EMA (0.999) of the query encoder, a queue of past keys as negatives, a linear
  head, T = 0.07, and shuffled BN (Sec. 3.3) so that a query and its key never share BN statistics.
- v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive Learning"): an MLP
  head, blur in the augmentation, T = 0.2, cosine learning-rate schedule.
- v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"): no
  queue (the batch's other keys are the negatives), a predictor, a symmetrised loss scaled by 2T,
  BN heads, momentum 0.99 -> 1 (cosine), BYOL's asymmetric views; runs on any backbone (CNN or ViT).

The queue is capped at half the training set (65536 is 5% of ImageNet; a queue as large as the data
would hold an image's own key from its previous epoch as a negative); the capped size is in ``self.cfg``.
Protocols see the query (online) backbone, as in the papers' linear evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import dist as cdist
from methods.base import Batch, Context, Method
from methods.ema import EMA, MOMENTUM_KNOB
from methods.heads import mlp
from methods.losses.moco import info_nce_loss
from methods.spec import MAX_DEPTH, MAX_DIM, MAX_JITTER, MAX_ROWS, MAX_TEMPERATURE, Ablation, Knob, Recipe, ViewConfig, cell, opt


@dataclass(frozen=True)
class MoCoConfig:
    """MoCo v1 defaults. Head widths are scaled to the CPU backbones (paper: 2048 / 4096 hidden, 128 / 256 out)."""

    # 1 linear (v1), 2 MLP (v2); None: 2 for CNNs, 3 for ViTs (v3 official configs).
    head_layers: int | None = opt(1, ge=1, le=MAX_DEPTH)
    head_bn: bool = False  # v3: BN in the head and an affine-free BN on its output
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)
    out_dim: int = opt(128, ge=1, le=MAX_DIM)
    predictor: bool = False  # v3: 2-layer predictor on the query branch
    queue_size: int = opt(65536, ge=0, le=MAX_ROWS)  # 0: in-batch negatives (v3); capped at half the training set
    symmetric: bool = False  # v3: each view is query for the other's key
    scale_by_2t: bool = False  # v3 multiplies each loss by 2T so the gradient scale does not depend on T
    # None: 1.0 for CNNs, 0.2 for ViTs (v3 official configs).
    temperature: float | None = opt(0.07, gt=0, le=MAX_TEMPERATURE)
    momentum: float = opt(0.999, ge=0, le=1)
    momentum_cosine: bool = False  # v3: momentum rises to 1 along a half cosine
    # v1/v2 ran BN per GPU on 8 GPUs with keys shuffled across them; 1 = off.
    shuffle_bn_groups: int = opt(8, ge=1, le=1024)
    crop_scale_min: float = opt(0.2, gt=0, le=1)
    jitter_p: float = opt(1.0, ge=0, le=1)  # v1 always jitters (InstDisc's recipe); v2/v3 with p 0.8
    # ColorJitter(0.4, 0.4, 0.4, 0.1); v1's hue is 0.4, v3's saturation 0.2.
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)
    blur_p: tuple[float, float] = opt((0.0, 0.0), ge=0, le=1)  # per view
    solarize_p: tuple[float, float] = opt((0.0, 0.0), ge=0, le=1)  # per view


@dataclass(frozen=True)
class MoCoV2Config(MoCoConfig):
    head_layers: int | None = 2
    temperature: float | None = 0.2
    jitter_p: float = 0.8
    blur_p: tuple[float, float] = (0.5, 0.5)


@dataclass(frozen=True)
class MoCoV3Config(MoCoConfig):
    head_layers: int | None = None
    head_bn: bool = True
    predictor: bool = True
    queue_size: int = 0
    symmetric: bool = True
    scale_by_2t: bool = True
    temperature: float | None = None
    momentum: float = 0.99
    momentum_cosine: bool = True
    shuffle_bn_groups: int = 1  # v3 uses SyncBN: statistics over the whole batch
    crop_scale_min: float = 0.2  # the ResNet-50 100-epoch config (--crop-min=.2)
    jitter_p: float = 0.8
    blur_p: tuple[float, float] = (1.0, 0.1)
    solarize_p: tuple[float, float] = (0.0, 0.2)


def grouped_forward(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int,
                    shuffle: bool) -> torch.Tensor:
    """``net`` applied one BN group at a time, so BN sees per-group statistics (MoCo's per-GPU BN).

    The groups are laid over the global batch (every rank's rows, rank-major): its row p is in group
    ``p % groups``, and each rank forwards its rows of group 0, 1, ... in turn. With synchronised BN a group's
    statistics are then those of the whole group at any world size, so 1 process x B and W processes x B/W agree,
    and every rank computes at once (plain per-rank BN would instead see groups W times smaller).
    Groups keep at least two rows of the global batch (BN needs them); one group is one plain forward. With
    ``shuffle`` (the key encoder, no gradient) the global batch is permuted first, as MoCo's multi-GPU
    ``_batch_shuffle_ddp``, so a query and its key never share BN statistics.

    Shape: x (n, ...) this rank's rows -> (n, ...) in the same order.
    """
    n = len(x)
    groups = max(1, min(groups, n * cdist.world_size() // 2))
    if groups == 1:
        return net(x)
    if shuffle:
        perm = cdist.broadcast(torch.randperm(n * cdist.world_size(), device=x.device))
        x = cdist.gather_detached(x)[perm][cdist.local_rows(n)]
    start = cdist.rank() * n
    rows = [torch.arange((g - start) % groups, n, groups, device=x.device) for g in range(groups)]
    out = torch.cat([net(x[r]) for r in rows])[torch.argsort(torch.cat(rows))]
    if shuffle:
        out = cdist.gather_detached(out)[torch.argsort(perm)][cdist.local_rows(n)]
    return out


class MoCo(Method):
    Config = MoCoConfig
    # v1 paper (Sec. 4 / official main_moco.py): SGD lr 0.03 (bs 256), wd 1e-4, momentum 0.9, 200 epochs with
    # x0.1 at epochs 120 and 160 (milestones 0.6 and 0.8 of training; v2 replaced it by cosine).
    paper_recipe = Recipe(optimizer="sgd", lr=0.03, weight_decay=1e-4, schedule="step", milestones=(0.6, 0.8))
    search_space = (MOMENTUM_KNOB, Knob("queue_size", choices=(256, 1024, 4096)))
    ablations = {"moco-momentum": Ablation(
        cells=(*(cell(f"momentum={m}", momentum=m) for m in (0.0, 0.9, 0.99, 0.999)),
               cell("queue=0 (in-batch)", queue_size=0), cell("queue=256", queue_size=256)),
        claim="He et al. 2020 Sec. 4.1: momentum 0 fails to train (loss oscillates); 0.99-0.999 work best")}
    quick_budget = True

    def __init__(self, ctx: Context, cfg: MoCoConfig) -> None:
        vit = ctx.backbone.startswith("vit")
        super().__init__(cfg := replace(
            cfg,
            head_layers=cfg.head_layers if cfg.head_layers is not None else (3 if vit else 2),
            temperature=cfg.temperature if cfg.temperature is not None else (0.2 if vit else 1.0),
            queue_size=min(cfg.queue_size, ctx.num_train // 2),
        ))
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, cfg.head_layers,
                             batch_norm=cfg.head_bn, last_bn=cfg.head_bn)
        self.predictor = mlp(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, 2) if cfg.predictor else nn.Identity()
        self.key_encoder = EMA(self.encoder, self.projector, momentum=cfg.momentum,
                               final=1.0 if cfg.momentum_cosine else None)
        if cfg.queue_size:
            self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.views = tuple(
            ViewConfig(scale=(cfg.crop_scale_min, 1.0), jitter_p=cfg.jitter_p, strength=cfg.jitter_strength,
                       blur_p=blur, solarize_p=solarize)
            for blur, solarize in zip(cfg.blur_p, cfg.solarize_p, strict=True)
        )
        self._new_keys: torch.Tensor | None = None

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._query(images)

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(grouped_forward(self.key_encoder, x, self.cfg.shuffle_bn_groups, shuffle=True), dim=1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        x1, x2 = batch.views
        queue = self.queue if cfg.queue_size else None
        scale = 2 * cfg.temperature if cfg.scale_by_2t else 1.0
        pairs = [(x1, x2), (x2, x1)] if cfg.symmetric else [(x1, x2)]
        loss, keys = 0.0, []
        for xq, xk in pairs:
            q = grouped_forward(self._query, xq, cfg.shuffle_bn_groups, shuffle=False)
            k = self._key(xk)
            if queue is None:  # in-batch negatives (v3): every rank's keys, the global batch's loss on each rank
                q, k = cdist.gather(q), cdist.gather_detached(k)
            loss = loss + scale * info_nce_loss(q, k, queue, cfg.temperature)
            keys.append(k)
        if cfg.queue_size:  # the queue takes the global batch's keys, in its order, on every rank
            self._new_keys = torch.cat([cdist.gather_detached(k) for k in keys])
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        self.key_encoder.update(self.encoder, self.projector, step=step, total=total)
        if self.cfg.queue_size and self._new_keys is not None:
            self._enqueue(self._new_keys)
        self._new_keys = None

    def _enqueue(self, keys: torch.Tensor) -> None:
        size = len(self.queue)
        keys = keys[-size:]  # a batch larger than the queue keeps its newest keys
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


class MoCoV2(MoCo):
    Config = MoCoV2Config
    # v2 paper: SGD lr 0.03 (bs 256), wd 1e-4, cosine schedule, 200 epochs.
    paper_recipe = Recipe(optimizer="sgd", lr=0.03, weight_decay=1e-4, schedule="cosine")
    ablations = {}
    # The EMA key encoder and the queue: state kept across steps.
    ci_datasets = ("digits",)


class MoCoV3(MoCo):
    Config = MoCoV3Config
    # v3 official ResNet-50 config (main_moco.py defaults): LARS lr 0.6 x bs/256, wd 1e-6, 10 warm-up epochs.
    # Its ViT config is AdamW lr 1.5e-4 x bs/256, wd 0.1, 40 warm-up epochs (pass a custom recipe for ViTs).
    paper_recipe = Recipe(optimizer="lars", lr=0.6, weight_decay=1e-6, warmup_epochs=10)
    search_space = (MOMENTUM_KNOB,)
    ablations = {}
    quick_budget = False
