"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views per image, a projection MLP, and the NT-Xent loss over the batch. The
projection head is dropped at evaluation: protocols see the backbone's features (paper Sec. 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core import dist as cdist
from methods.base import Batch, Context
from methods.heads import Projected, mlp
from methods.losses.contrastive import nt_xent_loss
from methods.spec import MAX_DIM, MAX_JITTER, MAX_TEMPERATURE, Ablation, Knob, Recipe, ViewConfig, cell, opt


@dataclass(frozen=True)
class SimCLRConfig:
    temperature: float = opt(0.5, gt=0, le=MAX_TEMPERATURE)  # paper Table 5 / B.9: 0.5 for CIFAR-10
    head: str = opt("mlp", choices=("mlp", "linear", "none"))  # paper Fig. 8: nonlinear > linear > none
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)
    out_dim: int = opt(128, ge=1, le=MAX_DIM)
    crop_scale_min: float = opt(0.08, gt=0, le=1)
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)  # CIFAR-10 uses s=0.5 (App. B.9)
    blur_p: float = opt(0.0, ge=0, le=1)  # the paper drops blur for CIFAR-10


class SimCLR(Projected):
    Config = SimCLRConfig
    # Paper: LARS, lr 0.3 x bs/256, wd 1e-6, 10 warm-up epochs (App. B.6 for CIFAR uses the same rule).
    paper_recipe = Recipe(optimizer="lars", lr=0.3, weight_decay=1e-6, warmup_epochs=10)
    search_space = (Knob("out_dim", choices=(64, 128, 256)),)
    ablations = {
        "simclr-head": Ablation(
            cells=(cell("head=none", head="none"), cell("head=linear", head="linear"), cell("head=mlp", head="mlp")),
            claim="Chen et al. 2020 Fig. 8 / Sec. 4.2: a nonlinear head beats a linear one (+3 points of linear "
                  "eval) and no head by more than 10 points, at every output dimension"),
        "simclr-temperature": Ablation(
            cells=tuple(cell(f"T={t}", temperature=t) for t in (0.05, 0.1, 0.5, 1.0)),
            claim="Chen et al. 2020 Table 5 (L2-normalised NT-Xent, 100 epochs): linear top-1 59.7 / 64.4 / 60.7 / "
                  "58.0 at T = 0.05 / 0.1 / 0.5 / 1: a middle temperature wins, both ends lose"),
    }
    quick_budget = True
    # Batch negatives; on 28x28 images too, as the quick suite trains on.
    ci_datasets = ("digits", "fashion-mnist")

    def __init__(self, ctx: Context, cfg: SimCLRConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        d = self.encoder.feature_dim
        if cfg.head == "mlp":
            self.projector = mlp(d, cfg.hidden_dim, cfg.out_dim, layers=2)
        elif cfg.head == "linear":
            self.projector = mlp(d, cfg.hidden_dim, cfg.out_dim, layers=1)
        else:
            self.projector = torch.nn.Identity()
        view = ViewConfig(scale=(cfg.crop_scale_min, 1.0), strength=cfg.jitter_strength, blur_p=cfg.blur_p)
        self.views = (view, view)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        # Every rank's embeddings are negatives: the global batch's loss on each rank (bench/core/dist.py).
        z0, z1 = (cdist.gather(self.embed(v)) for v in batch.views)
        return {"loss": nt_xent_loss(z0, z1, self.cfg.temperature)}
