"""unCLIP's prior at small scale: a CLIP text embedding -> a distribution over the image encoder's features.

unCLIP (Ramesh et al. 2022) samples the image embedding from a diffusion or autoregressive prior conditioned on the
text embedding. Here the prior is a conditional Gaussian with a low-rank-plus-diagonal covariance
(torch.distributions.LowRankMultivariateNormal, rank ``RANK``): an MLP maps the L2-normalised text embedding to the
mean and covariance factors of the standardised backbone features, fitted by maximum likelihood on the run's
caption / image pairs. Sampling it gives distinct feature vectors per prompt; the decoder turns them into pixels.
Why not a diffusion prior: the same CPU budget reason as the decoder's (bench/generation/decoder.py), and with
class-name captions (Fashion-MNIST has no captions) a prompt's image features are one class's cloud, which a
low-rank Gaussian describes well. Stored as prior.pt beside the run, written atomically, loaded weights_only.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.distributions import LowRankMultivariateNormal

from bench.core.errors import UsageError
from bench.data import Dataset
from bench.store import load_checkpoint, save_checkpoint
from methods.base import Method, TextTower

PRIOR_FILE = "prior.pt"
RANK = 8
EPOCHS = 40
BATCH = 128


class TextPrior(nn.Module):
    """Text embeddings (N, E) -> a LowRankMultivariateNormal over features (N, D)."""

    def __init__(self, text_dim: int, dim: int, rank: int = RANK, hidden: int = 256) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.net = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim * (rank + 2)))

    def forward(self, text: torch.Tensor) -> LowRankMultivariateNormal:
        out = self.net(nn.functional.normalize(text, dim=-1))
        loc, diag, factor = out.split([self.dim, self.dim, self.dim * self.rank], dim=-1)
        return LowRankMultivariateNormal(loc, factor.view(-1, self.dim, self.rank) / self.rank**0.5,
                                         nn.functional.softplus(diag) + 1e-3)

    @torch.no_grad()
    def sample(self, text: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """(1, E) text embedding -> n feature vectors (n, D) in the encoder's own scale."""
        dist = self(text.expand(n, -1))
        eps_w = torch.randn(n, self.rank, generator=generator)
        eps_d = torch.randn(n, self.dim, generator=generator)
        z = dist.loc + (dist.cov_factor @ eps_w.unsqueeze(-1)).squeeze(-1) + dist.cov_diag.sqrt() * eps_d
        return z * self.sigma + self.mu


def check_text_tower(cls: type[Method], run_dir: Path) -> None:
    if not issubclass(cls, TextTower):
        raise UsageError(f"{run_dir} is a run of a method without a text encoder; text-to-image needs a CLIP run "
                         "(repbench run --method clip ...)")


def train_captions(method: TextTower, ds: Dataset, template: str) -> list[str]:
    """The caption of every training image: the dataset's own, else its class name in the run's template."""
    if ds.train_text is not None:
        return list(ds.train_text)
    return [template.format(ds.classes[int(y)]) for y in ds.train_y]


def train_prior(path: Path, text: torch.Tensor, feats: torch.Tensor, log=print) -> TextPrior:
    """Maximum-likelihood fit of p(features | text) on aligned (N, E) text and (N, D) image features."""
    torch.manual_seed(0)
    prior = TextPrior(text.shape[1], feats.shape[1])
    prior.mu.copy_(feats.mean(0))
    prior.sigma.copy_(feats.std(0).clamp_min(1e-6))
    z = (feats - prior.mu) / prior.sigma
    opt = torch.optim.Adam(prior.net.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(z))
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            nll = -prior(text[idx]).log_prob(z[idx]).mean() / prior.dim
            opt.zero_grad(set_to_none=True)
            nll.backward()
            opt.step()
        if (epoch + 1) % 10 == 0:
            log(f"prior epoch {epoch + 1}/{EPOCHS}: NLL per dim {float(nll.detach()):.3f} ({time.perf_counter() - t0:.1f} s)")
    save_checkpoint(path, {"model": prior.state_dict(), "epoch": EPOCHS, "text_dim": text.shape[1], "rank": RANK})
    return prior.eval()


def load_prior(path: Path, dim: int) -> TextPrior:
    if not path.is_file():
        raise UsageError(f"no {path.name} in {path.parent}; train it first: repbench decode --run {path.parent}")
    state = load_checkpoint(path)
    prior = TextPrior(int(state["text_dim"]), dim, int(state["rank"]))
    try:
        prior.load_state_dict(state["model"])
    except RuntimeError:
        raise UsageError(f"{path} does not fit this run's features ({dim}-D); delete it and rerun repbench decode") from None
    return prior.eval()
