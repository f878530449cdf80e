"""pytest-benchmark for the hot paths: every loss (forward + backward), batched augmentation, one SimCLR training
step, and the k-NN and linear-probe protocols on 5,000 x 256 features.

Run: ``pytest benchmarks/test_hotpaths_bench.py --benchmark-only --benchmark-json=results/benchmarks/hotpaths.json``.
Compare a later run with a saved one and fail on a slowdown (README, "Benchmarks"):
``pytest benchmarks/test_hotpaths_bench.py --benchmark-only --benchmark-compare=<saved.json> --benchmark-compare-fail=mean:10%``
Inputs are random, seeded, and sized like one CPU training batch (N 256, D 128), so the numbers are about the code,
not the data. Two threads, as on the 2-core machines the suites are sized for.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import tempfile
from collections.abc import Callable

import pytest
import torch

import methods.losses
from bench.augment import Augmenter
from bench.config import RunConfig
from bench.data import Dataset
from bench.throughput import build
from methods.spec import ViewConfig
from protocols import PROTOCOLS
from protocols.base import Features

# Every public loss, found in its module (methods/losses/<name>.py lists them in __all__).
LOSSES = {name: vars(mod)[name] for mod in (importlib.import_module(f"methods.losses.{m.name}")
                                           for m in pkgutil.iter_modules(methods.losses.__path__))
          for name in vars(mod).get("__all__", ())}

THREADS = 2
N, D = 256, 128


@pytest.fixture(scope="module", autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def load_average(request):
    """Record the machine's 1-minute load beside each result: on a shared machine it explains most of the spread."""
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None:
        bench.extra_info["loadavg_1min"] = round(os.getloadavg()[0], 2)
        bench.extra_info["threads"] = torch.get_num_threads()


def _z(*shape: int, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape).requires_grad_(grad)


def _scores(*shape: int) -> torch.Tensor:
    """Cosine scores z.c of normalised embeddings and prototypes, as SwAV feeds its loss."""
    return torch.nn.functional.normalize(torch.randn(*shape), dim=1).mul(0.9).requires_grad_()


# Inputs per loss in methods.losses.__all__: (args, kwargs), one training batch's worth.
INPUTS: dict[str, Callable[[], tuple[tuple, dict]]] = {
    "nt_xent_loss": lambda: ((_z(N, D), _z(N, D)), {}),
    "info_nce_loss": lambda: ((_z(N, D), _z(N, D), torch.nn.functional.normalize(torch.randn(4096, D), dim=1)), {}),
    "byol_loss": lambda: ((_z(N, D), _z(N, D)), {}),
    "simsiam_loss": lambda: ((_z(N, D), _z(N, D)), {}),
    "barlow_twins_loss": lambda: ((_z(N, D), _z(N, D)), {}),
    "vicreg_loss": lambda: ((_z(N, D), _z(N, D)), {}),
    "clip_loss": lambda: ((_z(N, D), _z(N, D), torch.tensor(1 / 0.07)), {}),
    # 2 global + 4 local student crops, 2 teacher crops, K 1024 prototypes (CPU-sized DINO head).
    "dino_loss": lambda: (([_z(N, 1024) for _ in range(6)], [torch.randn(N, 1024) for _ in range(2)],
                           torch.zeros(1, 1024)), {}),
    "nce_loss": lambda: ((_z(N, 1 + 4096), torch.tensor(1.0), 60_000), {}),
    "swav_loss": lambda: (([_scores(N, 300) for _ in range(2)],), {}),
    "sinkhorn_knopp": lambda: ((torch.randn(N, 300),), {}),
    # MAE on 28x28 with 7x7 patches: L 16 patches of P 49 pixels, 75% hidden.
    "mae_loss": lambda: ((_z(N, 16, 49), torch.randn(N, 16, 49), torch.rand(N, 16) < 0.75), {}),
    "normalise_patches": lambda: ((torch.randn(N, 16, 49),), {}),
    "reconstruction_loss": lambda: ((_z(N, 1, 28, 28), torch.randn(N, 1, 28, 28)), {}),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss(benchmark, name):
    if name not in INPUTS:
        pytest.skip(f"no benchmark inputs for methods.losses.{name}: add a recipe to INPUTS")
    torch.manual_seed(0)
    args, kwargs = INPUTS[name]()
    fn = LOSSES[name]
    leaves = [a for a in _flat(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def step():
        out = fn(*args, **kwargs)
        loss = out if isinstance(out, torch.Tensor) else out[0]
        if leaves and loss.requires_grad:
            loss.backward()
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss).all()


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def test_augment_two_views_of_256(benchmark):
    """SimCLR's recipe (crop, flip, jitter; grey images skip the colour-only ops) on 2 x 256 28x28 views."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    aug = Augmenter((ViewConfig(), ViewConfig()), channels=1, image_size=28, mean=(0.286,), std=(0.353,))
    views = benchmark(aug, images)
    assert len(views) == 2 and views[0].shape == (256, 1, 28, 28)


def _synthetic(n: int = 512) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return Dataset("synthetic", x, y, x[:64], y[:64], [str(i) for i in range(10)])


def test_simclr_training_step_convnet_256(benchmark):
    """One optimiser step of SimCLR on the ConvNet, batch 256 of 28x28: forward, NT-Xent, backward, SGD."""
    ds = _synthetic()
    cfg = RunConfig(method="simclr", dataset="synthetic", batch_size=256, protocols=())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(cfg, ds, tmp)
        batch = trainer.batch(torch.arange(256))
        out = benchmark(trainer.step, batch)
    assert torch.isfinite(out["loss"])


@pytest.fixture(scope="module")
def features() -> tuple[Features, Features]:
    """5,000 train / 1,000 test 256-d features with class structure (10 Gaussian clusters), like a trained encoder's."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 256, generator=g)

    def split(n: int) -> Features:
        y = torch.arange(n) % 10
        x = centers[y] + 1.5 * torch.randn(n, 256, generator=g)
        return Features(x, y, 10)

    return split(5000), split(1000)


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_protocol_5000x256(benchmark, features, protocol):
    train, test = features
    fn = PROTOCOLS.get(protocol)
    metrics = benchmark.pedantic(lambda: fn(train, test, seed=0), rounds=3, iterations=1, warmup_rounds=1)
    assert 0.5 < metrics[protocol]["top1"] <= 1.0
