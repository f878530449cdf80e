"""An embedding-conditioned decoder: frozen features (N, D) -> images (N, C, H, W), trained on a run's training images.

Which decoder: a deterministic regression decoder (pixel MSE), not the conditional diffusion model that RCDM
(Bordes et al. 2022) and unCLIP use. Why: a diffusion decoder needs on the order of 10^5 steps and hundreds of
sampling steps per image to draw clean samples; on 2 shared CPU cores that is hours per run, and the table needs 24
runs. The regression decoder draws the conditional mean, so what it draws is what the embedding determines (detail
the embedding discards comes out blurred, which is the measurement), not a sample of what it leaves free.

Its image is the sum of two parts:
- a closed-form ridge regression from the standardised features to the pixels (fixed, not trained);
- a learned residual: one linear map to a 7x7 (8x8) grid of ``width`` channels, then a pre-activation residual block
  at each of three scales with two stride-2 transposed convs between (width, width, width/2 channels).
A decoder has to reproduce raw pixels from the raw pixels, or it bounds every row of the table. A conv decoder
alone did not (a width-8 one: 74.5% fixed-classifier top-1 on decoded Fashion-MNIST against 87.5% on the real images,
17% shape top-1 on `shapes` against 99%): gradient descent learns the low-variance directions of its input, which
carry the edges, last, so outlines come out as blobs. The ridge part has them from the start (for raw pixels it is
about the identity); the residual adds what a linear read-out of a non-linear embedding cannot draw.
Cost at the defaults (width 24, 15 epochs, batch 64), multiply-adds an image: 7.5 M for 784-D raw Fashion-MNIST
pixels, 6.5 M for 256-D convnet features; 22 M for 3072-D raw `shapes` pixels, 9.3 M for 256-D features there.
3.5 s an epoch of 2400 `shapes` images on one core; what a whole `repbench decode` of a run costs is in
results/generation/README.md.

Features are standardised with the training set's per-dimension mean and std, so raw pixels and a convnet's or ViT's
features train with the same settings. Stored as decoder.pt beside the run, through bench.store.save_checkpoint
(atomic, weights_only load); a killed training resumes from its last finished epoch. ``arch`` in its settings names
this architecture, so a decoder.pt from an older one is refused in one line instead of half-loaded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bench.augment import normalise
from bench.core.errors import UsageError
from bench.store import load_checkpoint, save_checkpoint

DECODER_FILE = "decoder.pt"
# Names the architecture in decoder.pt's settings, so a file from another one is refused, not half-loaded.
ARCH = "linear-resconv"


@dataclass(frozen=True)
class DecoderSettings:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 24
    seed: int = 0
    ridge: float = 1e-3
    arch: str = ARCH


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FeatureDecoder(nn.Module):
    """Standardised features (N, D) -> normalised images (N, C, H, W); H = W = 4 * base (28: 7x7, 32: 8x8).

    The image is a fixed linear (ridge) decoder's plus a learned convolutional residual.
    """

    def __init__(self, dim: int, channels: int, size: int, width: int = 24) -> None:
        super().__init__()
        if size % 4:
            raise UsageError(f"the decoder draws images whose side is a multiple of 4; this dataset's is {size}")
        self.base, self.width, self.image = size // 4, width, (channels, size, size)
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.register_buffer("ridge_w", torch.zeros(dim, channels * size * size))
        self.register_buffer("ridge_b", torch.zeros(channels * size * size))
        # Straight to the base grid: a narrow hidden layer would cap what a wide input can pass on.
        self.fc = nn.Linear(dim, width * self.base**2)
        self.up = nn.Sequential(
            ResBlock(width), nn.ConvTranspose2d(width, width, 4, 2, 1),
            ResBlock(width), nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
            ResBlock(width // 2), nn.BatchNorm2d(width // 2), nn.GELU(), nn.Conv2d(width // 2, channels, 3, padding=1))
        nn.init.zeros_(self.up[-1].weight)  # training starts from the ridge decoder's images
        nn.init.zeros_(self.up[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mu) / self.sigma
        linear = (z @ self.ridge_w + self.ridge_b).view(len(z), *self.image)
        return linear + self.up(self.fc(z).view(len(z), self.width, self.base, self.base))


def new_decoder(train_feats: torch.Tensor, target: torch.Tensor, width: int, ridge: float) -> FeatureDecoder:
    dec = FeatureDecoder(train_feats.shape[1], target.shape[1], target.shape[-1], width)
    std = train_feats.std(0)
    dec.mu.copy_(train_feats.mean(0))
    # A constant feature (dead unit) carries nothing: a huge sigma keeps a test image's deviation in it from counting.
    dec.sigma.copy_(torch.where(std > 1e-6, std, torch.full_like(std, 1e6)))
    w, b = ridge_fit((train_feats - dec.mu) / dec.sigma, target.flatten(1), ridge)
    dec.ridge_w.copy_(w)
    dec.ridge_b.copy_(b)
    return dec


def ridge_fit(z: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression z -> y (z centred); the penalty is ``ridge`` times the mean eigenvalue of z'z.

    Gradient descent learns the low-variance directions of the input (fine detail, edges) last, so a conv decoder
    alone draws blobs; the closed form has them from the start, and for raw pixels it is near the identity.
    """
    z64, y64 = z.double(), y.double()
    gram = z64.T @ z64
    gram.diagonal().add_(ridge * gram.diagonal().mean().clamp_min(1e-12))
    bias = y64.mean(0)
    return torch.linalg.solve(gram, z64.T @ (y64 - bias)).float(), bias.float()


def train_decoder(path: Path, feats: torch.Tensor, images_u8: torch.Tensor, mean, std, settings: DecoderSettings,
                  resume: bool = True, log=print) -> FeatureDecoder:
    """Fit (or finish fitting) the decoder stored at ``path``; a checkpoint is written after every epoch."""
    torch.manual_seed(settings.seed)
    target = normalise(images_u8, mean, std)
    dec = new_decoder(feats, target, settings.width, settings.ridge)
    opt = torch.optim.Adam(dec.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs)
    start = 0
    if resume and path.is_file():
        state = load_decoder_state(path, settings)
        dec.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]
        log(f"resuming {path} at epoch {start}/{settings.epochs}")
    for epoch in range(start, settings.epochs):
        t0, loss = time.perf_counter(), run_epoch(dec, opt, feats, target, settings.batch_size)
        sched.step()
        save_checkpoint(path, {"model": dec.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "rng": torch.get_rng_state(), "epoch": epoch + 1, "settings": asdict(settings)})
        log(f"decoder epoch {epoch + 1}/{settings.epochs}: train MSE {loss:.4f} ({time.perf_counter() - t0:.1f} s)")
    return dec.eval()


def run_epoch(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, batch_size: int,
              loss_fn=nn.functional.mse_loss) -> float:
    """One shuffled pass of minibatch steps on ``loss_fn(net(x), target)``; the mean loss. The fixed classifiers
    train with it too (cross-entropy)."""
    net.train()
    total, order = 0.0, torch.randperm(len(x))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        loss = loss_fn(net(x[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / len(x)


def load_decoder_state(path: Path, settings: DecoderSettings | None = None) -> dict:
    state = load_checkpoint(path)
    if settings is not None and state.get("settings") != asdict(settings):
        raise UsageError(f"{path} was trained with other settings ({state.get('settings')}); delete it to retrain "
                         "with these, or pass the same options")
    return state


def load_decoder(path: Path, dim: int, channels: int, size: int) -> FeatureDecoder:
    """The finished decoder at ``path`` (weights_only load), in eval mode."""
    if not path.is_file():
        raise UsageError(f"no {path.name} in {path.parent}; train it first: repbench decode --run {path.parent}")
    state = load_decoder_state(path)
    if state.get("settings", {}).get("arch") != ARCH:
        raise UsageError(f"{path} was trained by an older decoder; retrain it: repbench decode --restart --run {path.parent}")
    settings = DecoderSettings(**state["settings"])
    if state["epoch"] < settings.epochs:
        raise UsageError(f"{path} stopped at epoch {state['epoch']}/{settings.epochs}; finish it: "
                         f"repbench decode --run {path.parent}")
    dec = FeatureDecoder(dim, channels, size, settings.width)
    try:
        dec.load_state_dict(state["model"])
    except RuntimeError:
        raise UsageError(f"{path} does not fit this run's features ({dim}-D); delete it and rerun repbench decode") from None
    return dec.eval()
