"""The batched view operations behind ``bench.augment.Augmenter``.

Each function takes a whole batch of R rows (every view of one resolution, stacked) with per-row random
parameters and costs a fixed number of tensor operations whatever R is: no per-sample Python, and no per-op
gating that slices the batch (kornia's way, a launch storm on a GPU). A row that skips an operation gets its
neutral parameter (factor 1, hue 0, sigma 0, gate off), which leaves it unchanged.

The draws follow kornia 0.9's RandomResizedCrop, RandomHorizontalFlip, ColorJitter, RandomGrayscale,
RandomGaussianBlur and RandomSolarize (tests/test_augment_batched.py compares ranges and output statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, kornia's rgb_to_grayscale
CANDIDATES = 10  # crop boxes tried per sample before the fallback, as kornia and torchvision do
GATES = ("flip", "jitter", "gray", "blur", "solarize")  # per-row coin flips, each with its view's rate
FACTORS = ("b", "c", "s", "h", "sigma")  # per-row uniform draws, each in its view's range
NEUTRAL = (1.0, 1.0, 1.0, 0.0, 0.0)  # ... and their value where the row's gate is off
GATED_BY = (1, 1, 1, 1, 3)  # jitter gates the colour factors, blur sigma
# Per-view constants, one row of ``cfg`` per view, laid out so that each draw below is one operation on a slice.
CFG = ("scale_lo", "logr_lo", "scale_hi", "logr_hi", "fallback_w", "fallback_h",
       *(f"{g}_p" for g in GATES), *(f"{f}_lo" for f in FACTORS), *(f"{f}_hi" for f in FACTORS))
P_GATES = slice(6, 6 + len(GATES))
F_LO = slice(P_GATES.stop, P_GATES.stop + len(FACTORS))
F_HI = slice(F_LO.stop, F_LO.stop + len(FACTORS))
# Uniform draws per row: area and log-ratio candidates, crop start x / y, the gates, the factors.
U_CROP, U_START = slice(0, 2 * CANDIDATES), slice(2 * CANDIDATES, 2 * CANDIDATES + 2)
U_GATES = slice(U_START.stop, U_START.stop + len(GATES))
U_FACTORS = slice(U_GATES.stop, U_GATES.stop + len(FACTORS))
N_UNIFORM = U_FACTORS.stop


def draw(cfg: torch.Tensor, n: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """Per-row parameters for ``n`` images under each of the V views in ``cfg`` (V, len(CFG)): rows view-major.
    One uniform tensor, then a fixed handful of operations whatever V and n."""
    u = torch.rand(cfg.shape[0], n, N_UNIFORM, device=cfg.device)
    c = cfg.unsqueeze(1)  # (V, 1, P) broadcasts over the n images
    bounds = torch.tensor((width, height), device=cfg.device, dtype=cfg.dtype)
    size = _crop_size(u, c, bounds)  # (V, n, 2): w, h
    start = (u[..., U_START] * (bounds + 1 - size)).floor()
    box = torch.cat((start, start + size - 1), -1).flatten(0, 1)  # x0, y0, x1, y1
    gates = (u[..., U_GATES] < c[..., P_GATES]).flatten(0, 1)
    drawn = (c[..., F_LO] + u[..., U_FACTORS] * (c[..., F_HI] - c[..., F_LO])).flatten(0, 1)
    neutral = torch.tensor(NEUTRAL, device=cfg.device, dtype=cfg.dtype)
    factors = torch.where(gates[:, GATED_BY], drawn, neutral)
    return {"box": box, **{g: gates[:, i] for i, g in enumerate(GATES)}, **{f: factors[:, i] for i, f in enumerate(FACTORS)}}


def _crop_size(u: torch.Tensor, c: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """kornia's RandomResizedCrop sizes (w, h): the first of 10 (area, log-uniform ratio) candidates that fits,
    else the view's fallback, in whole pixels."""
    lo, hi = c[..., 0:2].unsqueeze(-1), c[..., 2:4].unsqueeze(-1)
    area, log_ratio = (lo + u[..., U_CROP].unflatten(-1, (2, CANDIDATES)) * (hi - lo)).unbind(-2)
    area, ratio = area * bounds.prod(), log_ratio.exp()
    wh = torch.stack(((area * ratio).sqrt(), (area / ratio).sqrt()), -2).round()  # (V, n, 2, 10)
    fits = ((wh > 0) & (wh <= bounds.view(2, 1))).all(-2)
    first = fits & (fits.cumsum(-1) == 1)
    chosen = (wh * first.unsqueeze(-2)).sum(-1)
    return torch.where(fits.any(-1, keepdim=True), chosen, c[..., 4:6]).clamp(min=1).minimum(bounds)


def _tent(start: torch.Tensor, step: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """(R, size, length) bilinear weights: output sample i reads source position start + i * step."""
    pos = start.unsqueeze(1) + step.unsqueeze(1) * torch.arange(size, device=start.device, dtype=start.dtype)
    src = torch.arange(length, device=start.device, dtype=start.dtype)
    return (1 - (pos.unsqueeze(2) - src).abs()).clamp_(min=0)


def resized_crop(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int, scale: float = 1.0) -> torch.Tensor:
    """Crop each row's box (x0, y0, x1, y1 in pixels, corners on pixel centres as kornia's align_corners=True
    resize) to size x size, bilinear, mirrored where ``flip``; ``x`` (N, C, H, W) is shared by the R = V * N rows.

    The crop is axis-aligned, so resampling is separable: two batched matmuls with per-row interpolation
    matrices instead of a grid_sample (which gathers four pixels per output pixel). The flip is folded into the
    horizontal matrix (it reads the box from right to left), ``scale`` (1/255 for uint8 input) into the vertical
    one. The V views of an image share its pass down (V * size matrix rows against one image), and channels ride
    in the matmul's rows, so no batch entry is a tiny single-channel product.
    """
    n, c, h, w = x.shape
    views = box.shape[0] // n
    step = (box[:, 2:] - box[:, :2]) / max(size - 1, 1)
    x_start = torch.where(flip, box[:, 2], box[:, 0])
    x_step = torch.where(flip, -step[:, 0], step[:, 0])
    across = _tent(x_start, x_step, size, w).view(views, n, size, w).permute(1, 0, 3, 2)  # (N, V, W, S)
    down = (_tent(box[:, 1], step[:, 1], size, h) * scale).view(views, n, size, h).transpose(0, 1)  # (N, V, S, H)
    rows = down.reshape(n, views * size, h) @ x.transpose(1, 2).reshape(n, h, c * w)  # (N, V*S, C*W)
    out = rows.view(n * views, size * c, w) @ across.reshape(n * views, w, size)  # (N*V, S*C, S)
    return out.view(n, views, size, c, size).permute(1, 0, 3, 2, 4).reshape(-1, c, size, size)


def _per_row(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


# The colour steps work in place on the batch they are given (the pipeline's own intermediate): on a CPU a
# fresh batch-sized tensor per elementwise op costs as much as the op (allocation and page faults).


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_row(f)).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the row's grey image (kornia's adjust_contrast_with_mean_subtraction)."""
    mean = (_gray(x) if x.shape[1] == 3 else x).mean((1, 2, 3), keepdim=True)
    f = _per_row(f)
    return x.mul_(f).add_(mean * (1 - f)).clamp_(0, 1)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the row's grey image (kornia's adjust_saturation_with_gray_subtraction); RGB only."""
    f = _per_row(f)
    g = _gray(x).mul_(1 - f)
    return x.mul_(f).add_(g).clamp_(0, 1)


def hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``f`` turns (kornia's adjust_hue), through the closed form of HSV -> RGB
    (channel n: V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6). Selections are products
    with 0/1 masks: torch.where is several times slower than arithmetic on a CPU."""
    v, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    d = v - low
    r, g, b = x[:, :1], x[:, 1:2], x[:, 2:]
    red = ((r >= g) & (r >= b)).to(x.dtype)  # ties as kornia's rgb_to_hsv: red, then green, then blue
    green = (g >= b).to(x.dtype).mul_(1 - red)
    blue = 1 - red - green
    h6 = (g - b).mul_(red).add_((b - r).add_(d, alpha=2).mul_(green)).add_((r - g).add_(d, alpha=4).mul_(blue))
    h6 = h6.div_(d.clamp(min=1e-20)).add_(6 * _per_row(f))  # 6 H; grey pixels (d = 0) have 0
    k = h6 + torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = k.sub_((k / 6).floor_().mul_(6))
    t = torch.minimum(k, 4 - k).clamp_(0, 1).mul_(d)
    return torch.sub(v, t, out=x)


JITTER = {"b": brightness, "c": contrast, "s": saturation, "h": hue}
JITTER_ORDER = ("b", "c", "s", "h")  # kornia's indices 0..3 of its drawn permutation


def grayscale(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x.lerp_(_gray(x), _per_row(gate).to(x.dtype))


def blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Gaussian blur with a per-row sigma (0: identity), kornia's kernel and reflect border: one depthwise
    (grouped) convolution across, one down, each row-channel its own group."""
    rows, c, height, width = x.shape
    offset = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    # sigma 0 leaves only the centre tap: exp(0) = 1 and exp(-large) = 0.
    kernel = torch.exp(-offset.square() / (2 * sigma.square()).clamp(min=1e-30).unsqueeze(1))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (R * C, k)
    pad = k // 2
    y = F.pad(x.reshape(1, rows * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(-1, 1, 1, k), groups=rows * c)
    return F.conv2d(y, kernel.view(-1, 1, k, 1), groups=rows * c).view(rows, c, height, width)


def solarize(x: torch.Tensor, gate: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """kornia's RandomSolarize(thresholds=0, additions=0): invert the pixels at or above 0.5, as |x - 1|."""
    return x.sub_(((x >= threshold) & _per_row(gate)).to(x.dtype)).abs_()
