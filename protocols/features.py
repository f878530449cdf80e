"""Frozen features from the un-augmented (center) view, extracted once and shared by every protocol."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract(encoder: nn.Module, images_u8: torch.Tensor, mean, std, device: str | torch.device = "cpu",
            batch_size: int = 1024) -> torch.Tensor:
    """Encoder features of uint8 images, in eval mode (frozen BN statistics).

    Shape: images_u8 (N, C, H, W) uint8 -> (N, D) float32 on the CPU.
    """
    was_training = encoder.training
    encoder.eval()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
        out.append(encoder((x - m) / s).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
