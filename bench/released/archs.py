"""The architectures released weights are loaded into, built from torchvision, and the input adapter in front.

Released ResNets are torchvision ResNets (ImageNet stem); released ViTs (DINO, MoCo v3, MAE) are timm ViTs,
whose blocks are the same computation as torchvision's VisionTransformer (pre-norm, LayerNorm eps 1e-6, exact
GELU, fused qkv projection, CLS token after the final norm), so torchvision's module holds them under other names.
CLIP is open_clip's model, built in clip.py; only the Adapter here is shared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTSize:
    dim: int
    depth: int
    heads: int
    patch: int = 16


VIT_SIZES = {"vit-s16": ViTSize(384, 12, 6), "vit-b16": ViTSize(768, 12, 12), "vit-l16": ViTSize(1024, 24, 16)}
RESNETS: dict[str, Callable[..., nn.Module]] = {"resnet18": torchvision.models.resnet18,
                                                "resnet50": torchvision.models.resnet50}
ARCHS = (*RESNETS, *VIT_SIZES)


def arch_family(name: str) -> str:
    return "resnet" if name in RESNETS else "vit"


def patch_size(name: str) -> int | None:
    size = VIT_SIZES.get(name)
    return size.patch if size else None


def build_arch(name: str, image_size: int) -> nn.Module:
    """An untrained module for ``name`` whose forward gives pooled features (classifier removed)."""
    if name in RESNETS:
        net = RESNETS[name](weights=None)
        net.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return net
    s = VIT_SIZES[name]
    net = VisionTransformer(image_size, s.patch, s.depth, s.heads, s.dim, 4 * s.dim)
    net.feature_dim = s.dim
    net.heads = nn.Identity()
    return net


class Adapter(nn.Module):
    """Images scaled to [0, 1] -> what the released network was trained on: 3 channels, its size, its statistics.

    Grey images are repeated to RGB rather than averaged into the first conv, so the released weights are used
    unchanged; resizing is antialiased, bilinear as torchvision's Resize on tensors unless the release says otherwise
    (CLIP: bicubic).
    """

    def __init__(self, net: nn.Module, in_channels: int, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation: str = "bilinear") -> None:
        super().__init__()
        self.net, self.repeat, self.image_size, self.mode = net, 3 // in_channels, image_size, interpolation
        self.feature_dim = net.feature_dim
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat(1, self.repeat, 1, 1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.mode, antialias=True,
                          align_corners=False).clamp(0, 1)  # bicubic overshoots; PIL clips when it resizes 8-bit images
        return self.net((x - self.mean) / self.std)
