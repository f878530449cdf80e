"""Multi-crop (SwAV, DINO): two global views plus several small local views, forwarded one resolution at a time."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from methods.vit import ViT


def local_size(image_size: int, ratio: float, min_size: int, backbone: nn.Module | None = None) -> int:
    """Side of a local crop: ``ratio`` of the image (96/224 in both papers), at least ``min_size`` (what the
    backbone can take: the convnet halves three times), a whole number of patches for a ViT, never more
    than the image."""
    p = backbone.patch_size if isinstance(backbone, ViT) else 1
    side = max(min_size, p * round(image_size * ratio / p))
    return min(image_size, side)


def forward_by_resolution(backbone: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Backbone features of all views, concatenated in view order; consecutive views of one size share a
    forward pass (DINO's MultiCropWrapper), so BN sees all crops of a resolution together.

    Shape: views V tensors (N, C, H_v, W_v), equal sizes adjacent -> (V * N, D).
    """
    feats = [backbone(torch.cat(list(group))) for _, group in itertools.groupby(views, key=lambda v: v.shape[-2:])]
    return torch.cat(feats)
