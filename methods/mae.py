"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

Hide a random 75% of the patches, encode only the visible ones with a ViT, and let a light
transformer decoder, given mask tokens at the hidden positions, predict the hidden patches' pixels
(per-patch normalised by default, Table 1d). The loss sees the hidden patches only. Protocols see
the ViT on the whole image; the decoder is dropped.

MAE needs a patch encoder, so its encoder is always the ``vit`` backbone: with ``--backbone vit``
the backbone's options apply; any other ``--backbone`` (the suites pass convnet to every method)
is ignored and a default vit is built — ``Config.encoder`` records this, and the reconstruction
metric records the encoder's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.core import dist as cdist
from bench.core.errors import UsageError
from methods.backbones import build_backbone
from methods.base import Batch, Context, Decoder, Method
from methods.losses.reconstruction import mae_loss, normalise_patches
from methods.spec import MAX_DEPTH, MAX_DIM, Ablation, Knob, Recipe, ViewConfig, cell, opt
from methods.vit import patchify, random_masking, sincos_2d, transformer, unpatchify


@dataclass(frozen=True)
class MAEConfig:
    # Fixed: whatever --backbone says, the encoder is a vit (see module docstring).
    encoder: str = opt("vit", choices=("vit",))
    # Features the protocols see. The paper probes the CLS token but notes average pooling works as well
    # (App. A.1); in a 2-epoch budget the CLS token, trained only through the decoder's attention,
    # is nearly constant (embed std ratio 0.04 on digits: the collapse watchdog stops the run), so: mean.
    pool: str = opt("mean", choices=("mean", "cls"))
    mask_ratio: float = opt(0.75, ge=0, lt=1)
    norm_pix: bool = True  # per-patch normalised targets
    # "Light": the paper's decoder is 512 wide against ViT-L's 1024. Its sin-cos positions need a multiple of 4.
    decoder_dim: int = opt(64, ge=4, le=MAX_DIM, multiple_of=(4, "decoder_heads"))
    decoder_depth: int = opt(2, ge=1, le=MAX_DEPTH)
    decoder_heads: int = opt(4, ge=1, le=MAX_DEPTH)
    crop_scale_min: float = opt(0.2, gt=0, le=1)  # the paper's only augmentation: random resized crop (0.2, 1) + flip
    metric_seed: int = opt(0, ge=0, le=2**31 - 1)  # the fixed masks the test-split reconstruction metric uses


class MAEDecoder(nn.Module):
    def __init__(self, enc_dim: int, grid: int, patch_dim: int, cfg: MAEConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        pos = torch.cat([torch.zeros(1, cfg.decoder_dim), sincos_2d(grid, grid, cfg.decoder_dim)])
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = transformer(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor, length: int) -> torch.Tensor:
        """Encoder tokens (N, 1 + L', D) of the kept patches -> predicted patches (N, L, P)."""
        x = self.embed(tokens)
        full = self.mask_token.to(x.dtype).expand(len(x), length, -1).clone()  # x is bf16 under CUDA autocast
        full.scatter_(1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)))[:, 1:]


class MAE(Method, Decoder):
    Config = MAEConfig
    # Paper App. A.1: AdamW, base lr 1.5e-4 x bs/256, wd 0.05, betas (0.9, 0.95), 40 warm-up epochs.
    paper_recipe = Recipe(optimizer="adamw", lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40)
    required_backbone = "vit"
    search_space = (Knob("mask_ratio", 0.5, 0.9),)
    ablations = {"mae-mask-ratio": Ablation(
        cells=tuple(cell(f"mask={r}", mask_ratio=r) for r in (0.25, 0.5, 0.75, 0.9)),
        claim="He et al. 2022 Fig. 5 (ViT-L, 800 epochs): linear-probe accuracy rises steadily with the mask ratio "
              "up to the 75% sweet spot and falls beyond it; fine-tuning is flat from 40% to 80%")}

    def __init__(self, ctx: Context, cfg: MAEConfig) -> None:
        super().__init__(cfg)
        args = dict(ctx.backbone_args or {}) if ctx.backbone == "vit" else {}
        self.encoder = build_backbone("vit", ctx.in_channels, ctx.image_size, **{"pool": cfg.pool, **args})
        if int(self.encoder.num_patches * (1 - cfg.mask_ratio)) < 1:
            raise UsageError(f"mae mask_ratio={cfg.mask_ratio} hides all {self.encoder.num_patches} patches of these "
                             f"images; lower it below {1 - 1 / self.encoder.num_patches:.3f}")
        p = self.encoder.patch_size
        self.decoder = MAEDecoder(self.encoder.feature_dim, self.encoder.grid, ctx.in_channels * p * p, cfg)
        self.image_size = ctx.image_size
        self.views = (ViewConfig(scale=(cfg.crop_scale_min, 1.0), jitter_p=0.0, gray_p=0.0),)

    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None, masks: tuple | None = None):
        """Mask, encode, decode: (pred (N, L, P), target patches (N, L, P), mask (N, L), keep_idx).
        ``masks``: (keep_idx, mask) drawn by the caller; else drawn here for these N rows."""
        length = self.encoder.num_patches
        keep_idx, mask = masks or random_masking(len(x), length, self.cfg.mask_ratio, x.device, generator)
        pred = self.decoder(self.encoder.forward_tokens(x, keep_idx), keep_idx, length)
        return pred, patchify(x, self.encoder.patch_size), mask, keep_idx

    def to_pixels(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predictions in (normalised) pixel space; norm-pix ones take each true patch's mean/std back,
        as the paper's visualisations do."""
        if not self.cfg.norm_pix:
            return pred
        _, mean, std = normalise_patches(target)
        return pred * std + mean

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.views[0]
        # This rank's rows of the global batch's masks: the ranks draw alike and their RNGs stay in step.
        n = len(x)
        masks = random_masking(n * cdist.world_size(), self.encoder.num_patches, self.cfg.mask_ratio, x.device)
        pred, target, mask, _ = self.predict(x, masks=tuple(m[cdist.local_rows(n)] for m in masks))
        return {"loss": mae_loss(pred, target, mask, self.cfg.norm_pix)}

    def extra_metrics(self, test_images: torch.Tensor) -> dict[str, dict]:
        g = torch.Generator(device=test_images.device).manual_seed(self.cfg.metric_seed)
        sq, loss_sum, n = 0.0, 0.0, 0
        for x in test_images.split(1024):
            pred, target, mask, _ = self.predict(x, g)
            err = (self.to_pixels(pred, target) - target).pow(2).mean(-1)
            sq += float(err[mask].sum())
            loss_sum += float(mae_loss(pred, target, mask, self.cfg.norm_pix)) * int(mask.sum())
            n += int(mask.sum())
        enc = self.encoder
        return {"reconstruction": {
            "mse": sq / n, "split": "test", "space": "normalised pixels", "patches": "masked only",
            "mask_ratio": self.cfg.mask_ratio, "mask_seed": self.cfg.metric_seed, "norm_pix": self.cfg.norm_pix,
            "denormalised_with_true_patch_stats": self.cfg.norm_pix, "mse_loss_space": loss_sum / n,
            "encoder": f"vit dim={enc.feature_dim} depth={len(enc.blocks.layers)} patch={enc.patch_size}"}}

    # -- pictures (repbench plot reconstructions) ------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Rows of the picture: the masked input, the raw prediction, and the prediction with the visible
        patches pasted back (paper Fig. 2 shows the raw one; the loss never trains visible outputs)."""
        pred, target, mask, _ = self.predict(images, torch.Generator(device=images.device).manual_seed(seed))
        p, size = self.encoder.patch_size, (self.image_size, self.image_size)
        pixels, m = self.to_pixels(pred, target), mask.unsqueeze(-1)
        # Hidden patches shown at the dataset's mean pixel (0 once normalised): grey, unlike the black backgrounds.
        # A norm-pix prediction is drawn with the true patches' mean/std: say so on the picture.
        note = "\n(true patch\nmean/std)" if self.cfg.norm_pix else ""
        return {"masked": unpatchify(torch.where(m, torch.zeros_like(target), target), p, size),
                f"reconstruction{note}": unpatchify(pixels, p, size),
                f"reconstruction\n+ visible{note}": unpatchify(torch.where(m, pixels, target), p, size)}

    @property
    def blend_label(self) -> str:
        return "decoded blend A→B" + ("\n(blended patch\nmean/std)" if self.cfg.norm_pix else "")

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        """Decode linear blends of two images' encoder tokens under one shared mask, (steps, C, H, W).

        A norm-pix decoder predicts shape, not brightness; each blend takes the two images' per-patch
        mean/std blended the same way."""
        x = torch.stack([a, b])
        length = self.encoder.num_patches
        keep_idx, _ = random_masking(1, length, self.cfg.mask_ratio, x.device,
                                     torch.Generator(device=x.device).manual_seed(seed))
        keep_idx = keep_idx.expand(2, -1)
        tokens = self.encoder.forward_tokens(x, keep_idx)
        target = patchify(x, self.encoder.patch_size)
        w = torch.linspace(0, 1, steps, device=x.device).view(-1, 1, 1)
        blend = lambda t: (1 - w) * t[:1] + w * t[1:]
        pred = self.decoder(blend(tokens), keep_idx[:1].expand(steps, -1), length)
        if self.cfg.norm_pix:
            _, mean, std = normalise_patches(target)
            pred = pred * blend(std) + blend(mean)
        return unpatchify(pred, self.encoder.patch_size, (self.image_size, self.image_size))
