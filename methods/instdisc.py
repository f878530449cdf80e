"""Instance discrimination with a memory bank (Wu, Xiong, Yu & Lin 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination").

Every training image is its own class. A memory bank holds one L2-normalised 128-d embedding per
training image; an image's embedding is classified against the whole bank by a non-parametric softmax
``exp(v_i.f / T) / sum_j exp(v_j.f / T)`` (T = 0.07), either exactly (``loss="softmax"``, the default) or
with the paper's NCE approximation (``loss="nce"``: M = 4096 uniform noise samples, Z estimated once from
the first batch and then held fixed). After each step the bank rows of the batch move halfway to the new
embeddings (momentum 0.5) and are re-normalised. One augmented view per image; ``batch.index`` says
which bank rows the batch owns.

Why softmax by default: NCE exists to avoid the O(n) softmax over ImageNet's 1.28M images; here n is at
most 60,000 and the exact softmax is affordable. NCE is also unstable at this scale: the bank is fully
rewritten within one short epoch, while the untrained embeddings are still bunched together, so Z (fixed
while the bank was random) underestimates the noise mass by orders of magnitude and the noise term's
gradient explodes. Measured on digits, convnet, 10 epochs of batch 128, unified recipe: NCE loss 99 -> 3015,
effective rank 1.7, kNN 24%; the softmax fell 11.3 -> 6.75, kept rank 22, kNN 82% (with the paper recipe
NCE was flagged collapsed at epoch 3).

Noise samples are shared by the whole batch (one draw of M rows per step) rather than drawn per
sample as in the released code: the expectation is the same and it avoids an (N, M, D) gather.
Protocols see the backbone, before the 128-d projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bench.core import dist as cdist
from methods.base import Batch, Context, Method
from methods.heads import mlp
from methods.losses.instdisc import nce_loss
from methods.spec import MAX_DIM, MAX_JITTER, MAX_ROWS, MAX_TEMPERATURE, Knob, Recipe, ViewConfig, opt


@dataclass(frozen=True)
class InstDiscConfig:
    loss: str = opt("softmax", choices=("softmax", "nce"))  # nce: the paper's approximation (module docstring)
    out_dim: int = opt(128, ge=1, le=MAX_DIM)
    temperature: float = opt(0.07, gt=0, le=MAX_TEMPERATURE)
    bank_momentum: float = opt(0.5, ge=0, le=1)
    noise_samples: int = opt(4096, ge=1, le=MAX_ROWS)  # capped at the training-set size (recorded)
    crop_scale_min: float = opt(0.2, gt=0, le=1)
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)  # ColorJitter(0.4, 0.4, 0.4, 0.1); the code's hue is 0.4


class InstDisc(Method):
    Config = InstDiscConfig
    # Official lemniscate main.py: SGD lr 0.03 (bs 256), momentum 0.9, wd 1e-4, 200 epochs with x0.1
    # at 120 and 160 (milestones 0.6 and 0.8 of training).
    paper_recipe = Recipe(optimizer="sgd", lr=0.03, weight_decay=1e-4, schedule="step", milestones=(0.6, 0.8))
    search_space = (Knob("bank_momentum", 0.3, 0.9),)

    def __init__(self, ctx: Context, cfg: InstDiscConfig) -> None:
        if cfg.loss not in ("nce", "softmax"):
            raise ValueError(f"instdisc loss must be 'nce' or 'softmax', got {cfg.loss!r}")
        super().__init__(cfg := replace(cfg, noise_samples=min(cfg.noise_samples, ctx.num_train)))
        self.num_train = ctx.num_train
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, 0, cfg.out_dim, layers=1)
        self.register_buffer("bank", F.normalize(torch.randn(ctx.num_train, cfg.out_dim), dim=1))
        # log Z of the NCE normaliser; NaN until the first batch estimates it.
        self.register_buffer("log_z", torch.tensor(float("nan")))
        # The code's ColorJitter(0.4, 0.4, 0.4, 0.4) is applied always (no RandomApply).
        self.views = (ViewConfig(scale=(cfg.crop_scale_min, 1.0), jitter_p=1.0, strength=cfg.jitter_strength),)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(images)), dim=1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        f = self.embed(batch.views[0])
        if cfg.loss == "softmax":
            loss = F.cross_entropy(f @ self.bank.T.to(f.dtype) / cfg.temperature, batch.index)
        else:
            noise = torch.randint(0, self.num_train, (cfg.noise_samples,), device=f.device)
            pos = (f * self.bank[batch.index].to(f.dtype)).sum(dim=1, keepdim=True)
            logits = torch.cat([pos, f @ self.bank[noise].T.to(f.dtype)], dim=1) / cfg.temperature
            if torch.isnan(self.log_z):
                # Z = n * E[exp(v.f / T)], estimated from this first (global) batch's samples (paper Sec. 3.2).
                with torch.no_grad():
                    seen = cdist.gather_detached(logits).float().flatten()
                    self.log_z.fill_(float(torch.logsumexp(seen, 0)) - math.log(seen.numel()) + math.log(self.num_train))
            loss = nce_loss(logits, self.log_z, self.num_train)
        # Every rank's bank takes the whole global batch, so the banks stay identical.
        self._pending = (cdist.gather_detached(batch.index), cdist.gather_detached(f))
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        if self._pending is None:
            return
        index, f = self._pending
        m = self.cfg.bank_momentum
        self.bank[index] = F.normalize(m * self.bank[index] + (1 - m) * f.to(self.bank.dtype), dim=1)
        self._pending = None
