"""Batched per-sample augmentation on the training device.

Every image gets its own random crop, flip, jitter... (torchvision.transforms.v2 would draw ONE set per call
on a batch, which makes all views of a batch share a crop and quietly weakens contrastive learning). The views
of one output size are generated together: their rows stacked in one batch, each row with its own parameters,
each operation one pass over that batch (bench/augment_ops.py), so the number of tensor operations per call
does not grow with the batch size. Input is the uint8 batch straight from memory. The distributions are
kornia's RandomResizedCrop / RandomHorizontalFlip / ColorJitter / RandomGrayscale / RandomGaussianBlur /
RandomSolarize (tests/test_augment_batched.py); kornia applies each of them by slicing out the rows it gates,
a launch storm per view on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench import augment_ops as ops
from methods.spec import ViewConfig

__all__ = ["Augmenter", "Normalise", "ViewConfig", "normalise"]


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


def blur_kernel_size(size: int) -> int:
    """SimCLR blurs with a kernel of 10% of the image side (odd, at least 3), sigma in [0.1, 2.0]."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _fallback(image_size: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """kornia's crop (h, w) when none of the 10 candidates fits a square image: the whole image unless the
    ratio range excludes 1, then the widest or tallest crop of the nearest ratio."""
    lo, hi = min(ratio), max(ratio)
    if lo > 1:
        return float(math.floor(round(image_size / lo))), float(image_size)
    if hi < 1:
        return float(image_size), float(math.floor(round(image_size * hi)))
    return float(image_size), float(image_size)


def view_constants(view: ViewConfig, channels: int, image_size: int) -> list[float]:
    """One row of ``augment_ops.CFG``: the view's ranges and rates as kornia's transforms would get them."""
    j, hue = 0.8 * view.strength, 0.2 * view.strength
    colour = channels == 3
    jitter_p = view.jitter_p if view.strength > 0 else 0.0
    values = {
        "scale_lo": view.scale[0], "scale_hi": view.scale[1],
        "logr_lo": math.log(view.ratio[0]), "logr_hi": math.log(view.ratio[1]),
        "fallback_h": _fallback(image_size, view.ratio)[0], "fallback_w": _fallback(image_size, view.ratio)[1],
        "flip_p": view.flip_p, "jitter_p": jitter_p, "gray_p": view.gray_p if colour else 0.0,
        "b_lo": max(0.0, 1 - j), "b_hi": 1 + j, "c_lo": max(0.0, 1 - j), "c_hi": 1 + j,
        "s_lo": max(0.0, 1 - j) if colour else 1.0, "s_hi": 1 + j if colour else 1.0,
        "h_lo": -hue if colour else 0.0, "h_hi": hue if colour else 0.0,
        "blur_p": view.blur_p, "solarize_p": view.solarize_p,
        "sigma_lo": 0.1, "sigma_hi": 2.0,
    }
    return [float(values[name]) for name in ops.CFG]


class ViewGroup:
    """The views of one output size, generated in one pass: rows view-major (view 0's N images first)."""

    def __init__(self, index: list[int], views: list[ViewConfig], channels: int, image_size: int,
                 norm: Normalise, device: torch.device | str, compile: bool) -> None:
        self.index, self.norm = index, norm
        self.size = views[0].size or image_size
        self.cfg = torch.tensor([view_constants(v, channels, image_size) for v in views], device=device)
        c = {name: self.cfg[:, i] for i, name in enumerate(ops.CFG)}
        jitter = bool((c["jitter_p"] > 0).any())
        # Statically skipped: an operation no view of the group can apply (colour ones on grey images).
        self.steps = tuple(k for k in ops.JITTER_ORDER if jitter and bool((c[f"{k}_hi"] > c[f"{k}_lo"]).any()))
        self.gray, self.solarize = bool((c["gray_p"] > 0).any()), bool((c["solarize_p"] > 0).any())
        self.blur_k = blur_kernel_size(self.size) if (c["blur_p"] > 0).any() else 0
        wrap: Callable = torch.compile if compile else (lambda f: f)
        self._front, self._back = wrap(self.front), wrap(self.back)
        self._jitter = {k: wrap(ops.JITTER[k]) for k in self.steps}

    def front(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Draw every row's parameters, then crop, resize and flip (``x``: float 0..255)."""
        p = ops.draw(self.cfg, x.shape[0], x.shape[2], x.shape[3])
        return ops.resized_crop(x, p["box"], p["flip"], self.size, 1 / 255), p

    def back(self, y: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.gray:
            y = ops.grayscale(y, p["gray"])
        if self.blur_k:
            y = ops.blur(y, p["sigma"], self.blur_k)
        if self.solarize:
            y = ops.solarize(y, p["solarize"])
        return y.sub_(self.norm.mean).div_(self.norm.std)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        y, p = self._front(x)
        # kornia's ColorJitter: one random order of the four steps per call (here shared by the group's views, where
        # kornia drew one per view), drawn on the host so that no device sync is needed.
        for i in torch.randperm(4).tolist():
            k = ops.JITTER_ORDER[i]
            if k in self._jitter:
                y = self._jitter[k](y, p[k])
        return list(self._back(y, p).chunk(len(self.index)))


class Augmenter:
    """Turns a uint8 batch (N, C, H, W) into normalised float views, one per ViewConfig, in order.

    ``compile``: torch.compile the stages of each view group (worth it on a GPU, where it fuses the
    elementwise steps; on a CPU the first call compiles for minutes).
    """

    def __init__(self, views: tuple[ViewConfig, ...], channels: int, image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu",
                 compile: bool = False) -> None:
        self.views = views
        self.normalise = Normalise(mean, std, device)
        by_size: dict[int, list[int]] = {}
        for i, v in enumerate(views):
            by_size.setdefault(v.size or image_size, []).append(i)
        self.groups = [ViewGroup(idx, [views[i] for i in idx], channels, image_size, self.normalise, device, compile)
                       for idx in by_size.values()]

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> list[torch.Tensor]:
        x = images_u8.float()
        out: list[torch.Tensor] = [x] * len(self.views)
        for group in self.groups:
            for i, view in zip(group.index, group(x), strict=True):
                out[i] = view
        return out
