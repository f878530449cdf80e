"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

An image encoder (any registered backbone) and a text encoder (small Transformer, or CBOW: the paper's
bag-of-words baseline) are projected linearly into a joint space and trained with the symmetric
contrastive loss over the batch's image-caption pairs; the logit scale is learned (init 1/0.07, clamped
at 100). Protocols other than zero-shot see the backbone's features (before the projection), as CLIP's
linear probes do.

Captions: the training captions (``ctx.train_text``) give the tokeniser's vocabulary and ``train_tokens``,
which the loop hands over as ``batch.text``. When the dataset has no captions, every image is captioned
from its class name with ``fallback_template`` ("a photo of a {}."); the model then learns one text per
class, which makes it a supervised classifier with text-embedded class prototypes, and zero-shot on that
dataset is not zero-shot (the zero-shot protocol records ``captions: class-name fallback``).

``encode_image`` / ``encode_text`` return joint-space embeddings, NOT normalised (callers normalise, as
CLIP's own ``encode_*`` leave it to them); ``scale()`` is the current logit multiplier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core import dist as cdist
from methods.base import Batch, Context, Method, TextTower
from methods.losses.clip import clip_loss
from methods.spec import MAX_DEPTH, MAX_DIM, MAX_TEMPERATURE, MAX_TOKENS, Knob, Recipe, ViewConfig, opt
from methods.text import PAD, WordTokenizer, build_text_encoder


@dataclass(frozen=True)
class CLIPConfig:
    # transformer (the paper) | cbow (its bag-of-words baseline, Fig. 2)
    text_encoder: str = opt("transformer", choices=("transformer", "cbow"))
    pooling: str = opt("eot", choices=("eot", "cls"))  # eot (CLIP: EOT token under a causal mask) | cls
    embed_dim: int = opt(128, ge=1, le=MAX_DIM)  # joint space
    # Small: the captions are short and simple, and the text side must stay cheap on CPU.
    text_width: int = opt(64, ge=1, le=MAX_DIM, multiple_of="text_heads")
    text_layers: int = opt(2, ge=1, le=MAX_DEPTH)
    text_heads: int = opt(4, ge=1, le=MAX_DEPTH)
    max_len: int = opt(32, ge=2, le=MAX_TOKENS)  # tokens, EOT included (so a word and EOT); longer texts are truncated
    init_temperature: float = opt(0.07, gt=0, le=MAX_TEMPERATURE)  # logit scale starts at 1 / 0.07 (paper Sec. 2.5)
    # "clipped to prevent scaling the logits by more than 100"; below 1 the clamp would invert.
    max_logit_scale: float = opt(100.0, ge=1, le=1e4)
    learn_scale: bool = True  # False: a fixed temperature (init_temperature), as SimCLR-style losses use
    crop_scale_min: float = opt(0.5, gt=0, le=1)  # light crop (the paper's only augmentation is a random square crop)
    flip_p: float = opt(0.5, ge=0, le=1)
    fallback_template: str = opt("a photo of a {}.", pattern=r"[^{}]*\{\}[^{}]*",
                                 means="a caption with one {} where the class name goes, and no other braces")


class CLIP(Method, TextTower):
    Config = CLIPConfig
    # Paper (Sec. 2.5, App. F): AdamW, wd 0.2, cosine, 2,000 warm-up iterations (~0.16 of an epoch at 12.2k
    # iterations per epoch), lr 5e-4 at batch 32,768 (RN50). betas (0.9, 0.98) are its ViT value (its ResNets
    # used beta2 0.999); eps is torch's 1e-8 (the Recipe has no eps field).
    # CLIP did not scale its rate with batch size; 5e-4 x 256/32,768 = 3.9e-6 would not move a short run,
    # so 5e-4 is kept as the base rate for batch 256.
    paper_recipe = Recipe(optimizer="adamw", lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), warmup_epochs=0.16)
    search_space = (Knob("init_temperature", 0.02, 0.2, log=True),)
    uses_labels = True  # the class-name captions of a dataset without captions come from batch.labels

    def __init__(self, ctx: Context, cfg: CLIPConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        if ctx.train_text is not None:
            texts, self.caption_source = list(ctx.train_text), "dataset"
        else:
            texts, self.caption_source = [cfg.fallback_template.format(n) for n in ctx.class_names], "class-name fallback"
        self.tokenizer = WordTokenizer(texts, cfg.max_len)
        # Aligned with the training images; the loop indexes it into batch.text. None in the fallback,
        # where training_step looks the class caption up by label instead.
        self.train_tokens = self.tokenizer.encode(texts) if ctx.train_text is not None else None
        self.register_buffer("class_tokens", self.tokenizer.encode(texts) if ctx.train_text is None else None,
                             persistent=False)
        self.text_encoder = build_text_encoder(cfg.text_encoder, len(self.tokenizer), cfg.max_len, cfg.text_width,
                                               cfg.text_layers, cfg.text_heads, cfg.pooling)
        self.image_proj = nn.Linear(self.encoder.feature_dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_encoder.feature_dim, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)), requires_grad=cfg.learn_scale)
        # No colour jitter: colour is what captions talk about.
        self.views = (ViewConfig(scale=(cfg.crop_scale_min, 1.0), flip_p=cfg.flip_p, jitter_p=0.0, gray_p=0.0),)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features (N, D_enc) -> joint space (N, embed_dim)."""
        return self.image_proj(features)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, C, H, W) -> joint space (N, embed_dim), not L2-normalised."""
        return self.image_proj(self.encoder(images))

    def encode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        # Drop the padding columns the whole batch shares: attention cost follows the longest text.
        ids = ids[:, : max(1, int((ids != PAD).sum(1).max()))]
        return self.text_proj(self.text_encoder(ids))

    def encode_text(self, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
        """M strings -> joint space (M, embed_dim), not L2-normalised."""
        device = self.logit_scale.device
        ids = self.tokenizer.encode(list(texts))
        return torch.cat([self.encode_tokens(ids[i:i + batch_size].to(device)) for i in range(0, len(ids), batch_size)])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        text = batch.text if batch.text is not None else self.class_tokens[batch.labels]
        scale = self.scale()
        # Every rank's pairs are negatives: the global batch's loss on each rank (bench/core/dist.py).
        images, texts = cdist.gather(self.encode_image(batch.views[0])), cdist.gather(self.encode_tokens(text))
        loss = clip_loss(images, texts, scale)
        return {"loss": loss, "logit_scale": scale.detach()}

    def on_step_end(self, step: int, total: int) -> None:
        # As open_clip does after each step: keep the parameter itself in range, so it can come back down.
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))
