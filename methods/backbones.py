"""Shared backbones: images (N, C, H, W) -> features (N, D); each module exposes ``feature_dim``."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from methods.backbone_registry import BACKBONES

__all__ = ["BACKBONES", "ConvNet", "build_backbone", "convnet", "resnet18", "resnet50"]


class ConvNet(nn.Module):
    """The CPU default: four conv-BN-ReLU blocks (32-64-128-256), max-pool between, global mean pool."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.feature_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def convnet(in_channels: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> nn.Module:
    return ConvNet(in_channels, tuple(widths))


def _resnet(arch: str, in_channels: int, image_size: int, small_stem: bool | None) -> nn.Module:
    net = getattr(torchvision.models, arch)(weights=None)
    if small_stem is None:
        # CIFAR-style stem for small images (SimCLR App. B.9): ImageNet's 7x7/2 conv + pool would
        # shrink a 28x28 image to 7x7 before the first block.
        small_stem = image_size <= 64
    if small_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def resnet18(in_channels: int, image_size: int, small_stem: bool | None = None) -> nn.Module:
    return _resnet("resnet18", in_channels, image_size, small_stem)


def resnet50(in_channels: int, image_size: int, small_stem: bool | None = None) -> nn.Module:
    return _resnet("resnet50", in_channels, image_size, small_stem)


def build_backbone(name: str, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return BACKBONES.get(name)(in_channels=in_channels, image_size=image_size, **kwargs)
