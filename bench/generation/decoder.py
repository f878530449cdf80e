"""An embedding-conditioned decoder: frozen features (N, D) -> images (N, C, H, W), trained on a run's training images.

Which decoder: a deterministic transposed-conv decoder regressed with pixel MSE, not the conditional diffusion
model that RCDM (Bordes et al. 2022) and unCLIP use. Why: a diffusion
decoder needs on the order of 10^5 steps and hundreds of sampling steps per image to draw clean samples; on 2 shared
CPU cores that is hours per run, and the table needs 21 runs. The regression decoder (about 0.5 M multiply-adds an
image) trains in about a minute per run; it draws the conditional mean, so what it draws is what the embedding
determines (detail the embedding discards comes out blurred, which is the measurement), not a sample of what it
leaves free.

Features are standardised with the training set's per-dimension mean and std, so raw pixels (784-D, 0-centred
already) and a convnet's or ViT's features train with the same settings. Stored as decoder.pt beside the run, through
bench.store.save_checkpoint (atomic, weights_only load); a killed training resumes from its last finished epoch.
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


@dataclass(frozen=True)
class DecoderSettings:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 8
    seed: int = 0


class FeatureDecoder(nn.Module):
    """Standardised features (N, D) -> normalised images (N, C, H, W); H = W = 4 * base (28: 7x7, 32: 8x8)."""

    def __init__(self, dim: int, channels: int, size: int, width: int = 8) -> None:
        super().__init__()
        if size % 4:
            raise UsageError(f"the decoder draws images whose side is a multiple of 4; this dataset's is {size}")
        self.base, self.width = size // 4, width
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.fc = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 2 * width * self.base**2))
        self.up = nn.Sequential(
            nn.GELU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.GELU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.GELU(),
            nn.Conv2d(width // 2, channels, 3, padding=1))  # small: 21 runs train on 2 shared CPU cores

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mu) / self.sigma
        return self.up(self.fc(z).view(len(z), 2 * self.width, self.base, self.base))


def new_decoder(train_feats: torch.Tensor, channels: int, size: int, width: int) -> FeatureDecoder:
    dec = FeatureDecoder(train_feats.shape[1], channels, size, width)
    dec.mu.copy_(train_feats.mean(0))
    dec.sigma.copy_(train_feats.std(0).clamp_min(1e-6))  # a constant feature (dead unit) carries nothing
    return dec


def train_decoder(path: Path, feats: torch.Tensor, images_u8: torch.Tensor, mean, std, settings: DecoderSettings,
                  resume: bool = True, log=print) -> FeatureDecoder:
    """Fit (or finish fitting) the decoder stored at ``path``; a checkpoint is written after every epoch."""
    torch.manual_seed(settings.seed)
    dec = new_decoder(feats, images_u8.shape[1], images_u8.shape[-1], settings.width)
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
    target = normalise(images_u8, mean, std)
    for epoch in range(start, settings.epochs):
        t0, loss = time.perf_counter(), run_epoch(dec, opt, feats, target, settings.batch_size)
        sched.step()
        save_checkpoint(path, {"model": dec.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "rng": torch.get_rng_state(), "epoch": epoch + 1, "settings": asdict(settings)})
        log(f"decoder epoch {epoch + 1}/{settings.epochs}: train MSE {loss:.4f} ({time.perf_counter() - t0:.1f} s)")
    return dec.eval()


def run_epoch(dec: FeatureDecoder, opt: torch.optim.Optimizer, feats: torch.Tensor, target: torch.Tensor,
              batch_size: int) -> float:
    dec.train()
    total, order = 0.0, torch.randperm(len(feats))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        loss = nn.functional.mse_loss(dec(feats[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / len(feats)


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
