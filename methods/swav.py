"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

Online clustering: L2-normalised projections are scored against K learnable prototypes (kept on the
unit sphere); Sinkhorn-Knopp turns a global view's scores into soft codes that use every prototype
equally, and every other view predicts those codes (swapped prediction, temperature 0.1). Multi-crop
2 x global (scale 0.14-1) + 6 x local (0.05-0.14, 96/224 of the side). Small batches (the paper's
batch-256 setting) get a queue of past projections for Sinkhorn, filled from ``queue_start`` of
training and used once full; it is capped at half the training set (recorded in ``self.cfg``). The
prototypes are frozen for the first ``freeze_prototypes`` of training. Protocols see the backbone.
Across ranks Sinkhorn's sums are all-reduced and the queue takes the gathered rows of the global batch (the same
queue on every rank), so W ranks compute the codes one process computes for the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import dist as cdist
from methods.base import Batch, Context, Method
from methods.heads import mlp
from methods.losses.swav import swav_loss
from methods.multicrop import forward_by_resolution, local_size
from methods.spec import MAX_CROPS, MAX_DIM, MAX_IMAGE, MAX_JITTER, MAX_ROWS, MAX_TEMPERATURE, Knob, Recipe, ViewConfig, opt


@dataclass(frozen=True)
class SwAVConfig:
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)  # paper 2048, scaled to the CPU backbones
    out_dim: int = opt(128, ge=1, le=MAX_DIM)
    prototypes: int = opt(3000, ge=1, le=MAX_DIM)
    temperature: float = opt(0.1, gt=0, le=MAX_TEMPERATURE)
    epsilon: float = opt(0.05, gt=0, le=MAX_TEMPERATURE)  # Sinkhorn's entropy weight, a temperature of the codes
    sinkhorn_iterations: int = opt(3, ge=1, le=1000)
    queue_length: int = opt(3840, ge=0, le=MAX_ROWS)  # the batch-256 script; capped at half the training set
    queue_start: float = opt(0.075, ge=0, le=1)  # fraction of training (epoch 15 of 200)
    freeze_prototypes: float = opt(0.005, ge=0, le=1)  # fraction of training (5005 iterations = 1 of 200 epochs)
    n_local_crops: int = opt(6, ge=0, le=MAX_CROPS)
    global_scale: tuple[float, float] = opt((0.14, 1.0), gt=0, le=1)
    local_scale: tuple[float, float] = opt((0.05, 0.14), gt=0, le=1)
    local_size_ratio: float = opt(96 / 224, gt=0, le=1)
    local_min_size: int = opt(8, ge=1, le=MAX_IMAGE)
    jitter_strength: float = opt(1.0, ge=0, le=MAX_JITTER)  # SwAV's colour distortion s = 1
    blur_p: float = opt(0.5, ge=0, le=1)


class SwAV(Method):
    Config = SwAVConfig
    # Official swav_200ep_bs256_pretrain.sh: LARS lr 0.6 at batch 256, wd 1e-6, no warm-up, cosine to 0.0006.
    paper_recipe = Recipe(optimizer="lars", lr=0.6, weight_decay=1e-6, warmup_epochs=0)
    search_space = (Knob("epsilon", 0.02, 0.1, log=True), Knob("prototypes", choices=(30, 100, 300, 3000)))

    def __init__(self, ctx: Context, cfg: SwAVConfig) -> None:
        super().__init__(cfg := replace(cfg, queue_length=min(cfg.queue_length, ctx.num_train // 2)))
        self.total_steps = ctx.total_steps
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, layers=2)
        self.prototypes = nn.Linear(cfg.out_dim, cfg.prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.out_dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # rows filled so far
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # Host copies of the counters the step reads: int() of a device buffer at every step would wait on the GPU.
        # Read from the buffers once after a build or a load_state_dict, then kept in step by on_step_end.
        self._host: dict[str, int] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module._host.clear())
        self._new_rows: torch.Tensor | None = None
        common = dict(strength=cfg.jitter_strength, blur_p=cfg.blur_p)
        small = local_size(ctx.image_size, cfg.local_size_ratio, cfg.local_min_size, self.encoder)
        self.views = (*[ViewConfig(scale=cfg.global_scale, **common)] * 2,
                      *[ViewConfig(size=small, scale=cfg.local_scale, **common)] * cfg.n_local_crops)

    def counter(self, name: str) -> int:
        """``steps`` done or ``queue`` rows filled, from the host copies."""
        if not self._host:
            self._host.update(steps=int(self.steps_done), queue=int(self.queue_count))
        return self._host[name]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(images)), dim=1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, views, n = self.cfg, batch.views, len(batch.views[0])
        step = self.counter("steps")
        with torch.no_grad():  # prototypes live on the unit sphere (the official code renormalises each step)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(self.projector(forward_by_resolution(self.encoder, views)), dim=1)
        w = self.prototypes.weight
        if step < round(cfg.freeze_prototypes * self.total_steps):
            w = w.detach()
        scores = (z @ w.T).chunk(len(views))
        queue_scores = None
        if cfg.queue_length and self.counter("queue") >= cfg.queue_length:
            # Every rank holds the whole queue and brings its share of the rows to the all-reduced Sinkhorn.
            share = [self.queue[i].tensor_split(cdist.world_size())[cdist.rank()] for i in range(2)]
            queue_scores = [rows.to(w.dtype) @ w.detach().T for rows in share]
        loss = swav_loss(scores, cfg.temperature, cfg.epsilon, cfg.sinkhorn_iterations, (0, 1), queue_scores,
                         cdist.reduce_sum, cdist.reduce_max_detached)
        if cfg.queue_length and step >= round(cfg.queue_start * self.total_steps):
            self._new_rows = z[: 2 * n].detach().view(2, n, -1)
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        self.total_steps = total
        self.steps_done.fill_(step)
        self.counter("steps")  # the copies exist before they are kept in step
        self._host["steps"] = step
        if self._new_rows is not None:  # the global batch's rows, in its order, on every rank
            self._push(cdist.gather_detached(self._new_rows.transpose(0, 1).contiguous()).transpose(0, 1))
        self._new_rows = None

    def _push(self, rows: torch.Tensor) -> None:
        """Newest projections at the front of each view's queue, the oldest fall off (as the official code)."""
        length = self.queue.shape[1]
        rows = rows[:, :length]
        self.queue.copy_(torch.cat([rows.to(self.queue.dtype), self.queue[:, : length - rows.shape[1]]], dim=1))
        self.queue_count.copy_(torch.clamp(self.queue_count + rows.shape[1], max=length))
        self._host["queue"] = min(self.counter("queue") + rows.shape[1], length)
