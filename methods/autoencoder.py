"""Convolutional autoencoder (Masci et al. 2011), optionally denoising (Vincent et al. 2008, 2010).

The registered backbone (convnet by default) encodes an image to its pooled feature vector, the
bottleneck; a small transposed-conv decoder maps that vector back to pixels; the loss is pixel MSE
in normalised space. The denoising variant corrupts the encoder's input and still reconstructs the
clean view. Protocols see the bottleneck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core import dist as cdist
from bench.core.errors import UsageError
from methods.base import Batch, Context, Decoder, Method
from methods.losses.reconstruction import reconstruction_loss
from methods.spec import MAX_CHANNELS, Knob, Recipe, ViewConfig, opt

NOISES = ("none", "gaussian", "mask")


@dataclass(frozen=True)
class AutoencoderConfig:
    # none | gaussian (additive, std noise_level) | mask (zero a noise_level share of pixels)
    noise: str = opt("none", choices=NOISES)
    noise_level: float = opt(0.3, ge=0, le=1)  # a share of pixels for mask; gaussian stds past 1 drown the image
    # Channels of the decoder's first maps, halved at the second upsampling (so at least 2). 32 rather than 64:
    # same test MSE at the quick budget (0.44 vs 0.46 on 2,000 test images), a quarter of the decoder's compute
    # (measured).
    decoder_width: int = opt(32, ge=2, le=MAX_CHANNELS)
    crop_scale_min: float = opt(0.35, gt=0, le=1)


def corrupt(x: torch.Tensor, noise: str, level: float) -> torch.Tensor:
    """The denoising autoencoder's input; 0 is the dataset's mean pixel once normalised. The noise is this rank's
    rows of the global batch's draw (bench/core/dist.py: local_draw)."""
    if noise == "gaussian":
        return x + level * cdist.local_draw(lambda m: torch.randn(m, *x.shape[1:], dtype=x.dtype, device=x.device), len(x))
    if noise == "mask":
        keep = cdist.local_draw(lambda m: torch.rand(m, 1, *x.shape[2:], dtype=x.dtype, device=x.device), len(x)) >= level
        return x * keep
    return x


class ConvDecoder(nn.Module):
    """(N, D) -> (N, C, S, S): a linear map to a (S/4)^2 grid, then two stride-2 transposed convs.

    Every layer, the output one included, ends in BatchNorm. The targets are per-channel normalised
    pixels, which an affine output BN matches from the start; without it the last conv, a regression on
    288 positive correlated inputs, diverged under the unified recipe (SGD 0.06, momentum 0.9): loss 1 -> 66
    in 4 steps on Fashion-MNIST, measured.
    """

    def __init__(self, dim: int, channels: int, image_size: int, width: int) -> None:
        super().__init__()
        self.image_size, self.width = image_size, width
        self.start = math.ceil(image_size / 4)
        self.fc = nn.Linear(dim, width * self.start**2, bias=False)

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True), *up(width, width), *up(width, width // 2),
                                 nn.Conv2d(width // 2, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(self.fc(z).view(len(z), self.width, self.start, self.start))
        return x[..., :self.image_size, :self.image_size]


class Autoencoder(Method, Decoder):
    Config = AutoencoderConfig
    # No single paper recipe for conv autoencoders; Adam at 1e-3 without decay is the common practice.
    paper_recipe = Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.0)
    search_space = (Knob("noise_level", 0.1, 0.5),)

    def __init__(self, ctx: Context, cfg: AutoencoderConfig) -> None:
        if cfg.noise not in NOISES:
            raise UsageError(f"autoencoder noise={cfg.noise!r} not understood; use one of {', '.join(NOISES)}")
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        self.decoder = ConvDecoder(self.encoder.feature_dim, ctx.in_channels, ctx.image_size, cfg.decoder_width)
        self.views = (ViewConfig(scale=(cfg.crop_scale_min, 1.0), jitter_p=0.0, gray_p=0.0),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.views[0]
        return {"loss": reconstruction_loss(self(corrupt(x, self.cfg.noise, self.cfg.noise_level)), x)}

    def extra_metrics(self, test_images: torch.Tensor) -> dict[str, dict]:
        # 256 images a batch: the decoder's 28x28x32 maps of 1024 images would be 100 MB temporaries each.
        sq = sum(float((self(x) - x).pow(2).sum()) for x in test_images.split(256))
        return {"reconstruction": {"mse": sq / test_images.numel(), "split": "test", "space": "normalised pixels",
                                   "input": "clean", "bottleneck_dim": self.encoder.feature_dim}}

    # -- pictures (repbench plot reconstructions) ------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        rows = {}
        if self.cfg.noise != "none":
            g = torch.get_rng_state()
            torch.manual_seed(seed)
            rows["corrupted"] = images = corrupt(images, self.cfg.noise, self.cfg.noise_level)
            torch.set_rng_state(g)
        rows["reconstruction"] = self(images)
        return rows

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        """Decode linear blends of the two images' bottleneck vectors, (steps, C, H, W)."""
        z = self.encoder(torch.stack([a, b]))
        w = torch.linspace(0, 1, steps, device=z.device).unsqueeze(1)
        return self.decoder((1 - w) * z[:1] + w * z[1:])
