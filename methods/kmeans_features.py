"""Single-layer K-means features (Coates, Lee & Ng 2011, "An Analysis of Single-Layer Networks in
Unsupervised Feature Learning").

Fit, without SGD: sample random patches, normalise each patch (brightness and contrast), ZCA-whiten,
learn a K-means dictionary. Encode: every patch at stride ``stride`` -> triangle activation
``max(0, mean_k(z) - z_k)`` of its distances z to the centroids -> sum over the four image quadrants:
4K features. The paper's CIFAR-10 choices: 6x6 patches, stride 1, eps 10 (on 0-255 pixels), ZCA eps 0.1;
it used K = 1600 and 400k patches, which the 2-core budget cannot carry, hence K = 128 and 50k here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UsageError
from methods.base import Context, Method
from methods.spec import MAX_DIM, MAX_IMAGE, MAX_ROWS, opt


@dataclass(frozen=True)
class KMeansFeaturesConfig:
    num_centroids: int = opt(128, ge=1, le=MAX_DIM)
    # None: 6 (the paper's) on images of 16 px and more, 3 on smaller ones.
    patch_size: int | None = opt(None, ge=1, le=MAX_IMAGE)
    stride: int = opt(1, ge=1, le=MAX_IMAGE)
    # Patches sampled to fit the whitening and the dictionary; K-means needs one per centroid at least.
    num_patches: int = opt(50_000, ge="num_centroids", le=MAX_ROWS)
    norm_eps: float = opt(10.0, gt=0, le=1e6)  # per-patch contrast normalisation, in 0-255 pixel units squared
    zca_eps: float = opt(0.1, gt=0, le=1e6)
    kmeans_iters: int = opt(20, ge=1, le=10_000)


def normalise_patches(patches: torch.Tensor, eps: float) -> torch.Tensor:
    """Brightness and contrast normalisation of each row. Shape: (M, P) -> (M, P)."""
    centred = patches - patches.mean(dim=1, keepdim=True)
    return centred / (centred.var(dim=1, keepdim=True) + eps).sqrt()


def zca_fit(patches: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening from samples: mean (P,) and symmetric W (P, P) with (x - mean) @ W having ~identity
    covariance (up to the eps regulariser). Shape: patches (M, P)."""
    x = patches.double()
    mean = x.mean(dim=0)
    cov = torch.cov((x - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    w = evecs @ torch.diag((evals.clamp_min(0) + eps).rsqrt()) @ evecs.T
    return mean.to(patches.dtype), w.to(patches.dtype)


def triangle(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Triangle activation: max(0, mean_k z - z_k) with z the distances to the K centroids. Shape: (M, P) -> (M, K)."""
    # ||x||^2 + ||c||^2 - 2 x.c in one addmm, then in-place ops: this is the whole encoder's cost.
    z = torch.addmm(x.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1), x, centroids.T, alpha=-2)
    z = z.clamp_min_(0).sqrt_()
    mean = z.mean(dim=1, keepdim=True)
    return z.neg_().add_(mean).clamp_min_(0)


class KMeansEncoder(nn.Module):
    """Normalised images (N, C, H, W) -> (N, 4K); every fitted quantity is a buffer, so checkpoints restore it."""

    def __init__(self, channels: int, patch: int, stride: int, k: int, cfg: KMeansFeaturesConfig) -> None:
        super().__init__()
        self.patch, self.stride, self.cfg = patch, stride, cfg
        p = channels * patch * patch
        self.feature_dim = 4 * k
        for name, shape in (("pixel_mean", (1, channels, 1, 1)), ("pixel_std", (1, channels, 1, 1)),
                            ("zca_mean", (p,)), ("zca_w", (p, p)), ("centroids", (k, p))):
            self.register_buffer(name, torch.zeros(shape))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> contrast-normalised patches (N, L, P) in the paper's 0-255 pixel units."""
        pixels = (x * self.pixel_std + self.pixel_mean) * 255
        p = F.unfold(pixels, self.patch, stride=self.stride).transpose(1, 2)
        return normalise_patches(p.reshape(-1, p.shape[-1]), self.cfg.norm_eps).view(p.shape)

    def forward(self, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        # 32 images' distance matrix (~9 MB on 28 px) stays under glibc's mmap threshold; 128 images cost
        # 3 s of page-fault system time per 5,000 images on top of 5.7 s of compute (measured).
        return torch.cat([self._encode(c) for c in x.split(chunk)]) if len(x) else x.new_zeros(0, self.feature_dim)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patches(x)
        n, length, _ = p.shape
        f = triangle(((p - self.zca_mean) @ self.zca_w).reshape(n * length, -1), self.centroids)
        g = (x.shape[-1] - self.patch) // self.stride + 1
        f = f.view(n, g, g, -1)
        h = g // 2
        quads = (f[:, :h, :h], f[:, :h, h:], f[:, h:, :h], f[:, h:, h:])
        return torch.cat([q.sum(dim=(1, 2)) for q in quads], dim=1)


class KMeansFeatures(Method):
    Config = KMeansFeaturesConfig
    trained_by = "fit"

    def __init__(self, ctx: Context, cfg: KMeansFeaturesConfig) -> None:
        super().__init__(cfg)
        patch = cfg.patch_size or (6 if ctx.image_size >= 16 else 3)
        if patch > ctx.image_size:
            raise UsageError(f"kmeans-features patch_size={patch} is larger than the {ctx.image_size}-pixel images; "
                             f"give patch_size <= {ctx.image_size}")
        self.encoder = KMeansEncoder(ctx.in_channels, patch, cfg.stride, cfg.num_centroids, cfg)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        from sklearn.cluster import KMeans

        enc, dev = self.encoder, self.encoder.centroids.device
        enc.pixel_mean.copy_(torch.tensor(mean).view(enc.pixel_mean.shape))
        enc.pixel_std.copy_(torch.tensor(std).view(enc.pixel_std.shape))
        # Random patches (random image, random position), drawn from the run's seeded torch RNG.
        m, size = self.cfg.num_patches, images.shape[-1] - enc.patch + 1
        img = torch.randint(len(images), (m,))
        ys, xs = torch.randint(size, (m,)), torch.randint(size, (m,))
        rows = torch.arange(enc.patch)
        crops = images[img[:, None, None], :, (ys[:, None] + rows)[:, :, None], (xs[:, None] + rows)[:, None, :]]
        p = normalise_patches(crops.permute(0, 3, 1, 2).flatten(1).float().to(dev), self.cfg.norm_eps)
        zmean, zw = zca_fit(p, self.cfg.zca_eps)
        enc.zca_mean.copy_(zmean)
        enc.zca_w.copy_(zw)
        white = ((p - zmean) @ zw).cpu().numpy().astype(np.float32)
        km = KMeans(self.cfg.num_centroids, n_init=1, max_iter=self.cfg.kmeans_iters,
                    random_state=int(torch.randint(2**31 - 1, ()).item())).fit(white)
        enc.centroids.copy_(torch.from_numpy(km.cluster_centers_).to(dev))
