"""CLIP's image tower (Radford et al. 2021) under the names OpenAI's and open_clip's state dicts use (``visual.``
stripped): conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{ln_1, attn, ln_2,
mlp.c_fc, mlp.c_proj}, ln_post, proj. The feature is the projected CLS token, what ``encode_image`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipSize:
    width: int
    layers: int
    heads: int  # width // head width: 64 for OpenAI's models, 80 for open_clip's ViT-H
    patch: int
    output_dim: int


CLIP_SIZES = {"clip-vit-b32": ClipSize(768, 12, 12, 32, 512), "clip-vit-b16": ClipSize(768, 12, 12, 16, 512),
              "clip-vit-l14": ClipSize(1024, 24, 16, 14, 768), "clip-vit-h14": ClipSize(1280, 32, 16, 14, 1024)}


class QuickGELU(nn.Module):
    """OpenAI's approximation; open_clip's own trainings use the exact GELU unless the model is "-quickgelu"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ClipVisual(nn.Module):
    def __init__(self, size: ClipSize, image_size: int, quick_gelu: bool) -> None:
        super().__init__()
        w = size.width
        self.conv1 = nn.Conv2d(3, w, size.patch, size.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros((image_size // size.patch) ** 2 + 1, w))
        self.ln_pre, self.ln_post = nn.LayerNorm(w), nn.LayerNorm(w)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*(ResidualAttentionBlock(w, size.heads, quick_gelu)
                                                     for _ in range(size.layers)))
        self.proj = nn.Parameter(torch.zeros(w, size.output_dim))
        self.feature_dim = size.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(len(x), 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer.resblocks(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj
