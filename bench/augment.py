"""Batched per-sample augmentation on the training device (kornia).

Every image in a batch gets its own random crop, flip, jitter... (kornia draws parameters per
sample; torchvision.transforms.v2 would draw ONE set per call on a batch, which makes all views
of a batch share a crop and quietly weakens contrastive learning). Input is the uint8 batch
straight from memory; there is no per-image Python anywhere on this path: kornia's RandomResizedCrop
draws the boxes, ``BatchedResizedCrop`` applies them in one ``grid_sample`` (kornia's own application
slices and resizes image by image).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from methods.spec import ViewConfig


class BatchedResizedCrop(nn.Module):
    """RandomResizedCrop with kornia's sampling of boxes (area in ``scale``, log-uniform aspect ``ratio``) and
    one bilinear ``affine_grid``/``grid_sample`` for the whole batch, with kornia's corner-to-corner geometry
    (align_corners=True). kornia's own "slice" mode resizes each crop separately, several times slower
    (results/benchmarks/throughput.md); the same pixels to 3e-6 (tests/test_augment.py).
    """

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.sampler = K.RandomResizedCrop((size, size), scale=scale, ratio=ratio)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = self.sampler.forward_parameters(x.shape)["src"].to(x.device, x.dtype)  # (N, 4, 2): x, y of TL TR BR BL
        (x0, y0), (x1, y1) = box[:, 0].unbind(1), box[:, 2].unbind(1)
        h, w = x.shape[-2:]
        theta = x.new_zeros(len(x), 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / (w - 1), (x0 + x1) / (w - 1) - 1
        theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / (h - 1), (y0 + y1) / (h - 1) - 1
        grid = F.affine_grid(theta, [len(x), x.shape[1], self.size, self.size], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def build_pipeline(view: ViewConfig, channels: int, image_size: int) -> nn.Module:
    size = view.size or image_size
    s = view.strength
    ops: list[nn.Module] = [BatchedResizedCrop(size, view.scale, view.ratio)]
    if view.flip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=view.flip_p))
    if view.jitter_p > 0 and s > 0:
        if channels == 3:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=view.jitter_p))
        else:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, p=view.jitter_p))
    if channels == 3 and view.gray_p > 0:
        ops.append(K.RandomGrayscale(p=view.gray_p))
    if view.blur_p > 0:
        # SimCLR blurs with a kernel of 10% of the image side, sigma in [0.1, 2.0].
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize_p))
    return nn.Sequential(*ops)


class Normalise:
    """The one image normalisation: uint8 (N, C, H, W) -> float (x / 255 - mean) / std per channel, the statistics
    kept on the device. Training views, probes, features and pictures all go through it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu") -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.unit(images_u8.float().div_(255))

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images already scaled to [0, 1] (an augmented view)."""
        return (x - self.mean) / self.std


def normalise(images_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``Normalise`` once, on the images' device."""
    return Normalise(mean, std, images_u8.device)(images_u8)


class Augmenter:
    """Turns a uint8 batch (N, C, H, W) into normalised float views, one pipeline per view."""

    def __init__(self, views: tuple[ViewConfig, ...], channels: int, image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu") -> None:
        self.views = views
        self.pipelines = [build_pipeline(v, channels, image_size).to(device) for v in views]
        self.normalise = Normalise(mean, std, device)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> list[torch.Tensor]:
        x = images_u8.float().div_(255)
        return [self.normalise.unit(p(x)) for p in self.pipelines]
