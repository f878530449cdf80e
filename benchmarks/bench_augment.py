"""Augmentation speed: the batched view pipeline (bench/augment.py) against the kornia pipeline it replaced,
kept here as ``KorniaAugmenter``, the reference for speed and for distributions (tests/test_augment_batched.py).

Both run in one process on the same images, interleaved round by round, so the ratios hold on a noisy machine:
per view at batch 256 (SimCLR's two views; 28 px grey, 32 px RGB), then one SimCLR training step on the
ConvNet (augment + forward + backward + SGD) with each augmenter. Run:
``.venv/bin/python benchmarks/bench_augment.py [--rounds 7] [--steps 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import Augmenter, Normalise, blur_kernel_size
from bench.config import RunConfig
from bench.data import Dataset
from bench.throughput import build
from methods.spec import ViewConfig

CASES = (("28px-1ch", 1, 28), ("32px-3ch", 3, 32))


class BatchedResizedCrop(nn.Module):
    """kornia's RandomResizedCrop boxes applied in one affine_grid / grid_sample (the replaced implementation)."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.sampler = K.RandomResizedCrop((size, size), scale=scale, ratio=ratio)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = self.sampler.forward_parameters(x.shape)["src"].to(x.device, x.dtype)
        (x0, y0), (x1, y1) = box[:, 0].unbind(1), box[:, 2].unbind(1)
        h, w = x.shape[-2:]
        theta = x.new_zeros(len(x), 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / (w - 1), (x0 + x1) / (w - 1) - 1
        theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / (h - 1), (y0 + y1) / (h - 1) - 1
        grid = F.affine_grid(theta, [len(x), x.shape[1], self.size, self.size], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def kornia_pipeline(view: ViewConfig, channels: int, image_size: int) -> nn.Module:
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
        k = blur_kernel_size(size)
        ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize_p))
    return nn.Sequential(*ops)


class KorniaAugmenter:
    """The replaced Augmenter: one kornia pipeline per view, same interface."""

    def __init__(self, views, channels, image_size, mean, std, device="cpu") -> None:
        self.views = views
        self.pipelines = [kornia_pipeline(v, channels, image_size).to(device) for v in views]
        self.normalise = Normalise(mean, std, device)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> list[torch.Tensor]:
        x = images_u8.float().div_(255)
        return [self.normalise.unit(p(x)) for p in self.pipelines]


def simclr_views(blur_p: float = 0.0) -> tuple[ViewConfig, ViewConfig]:
    """SimCLR's two views as methods/simclr.py builds them by default (crop 0.08-1, s = 0.5, no blur)."""
    view = ViewConfig(scale=(0.08, 1.0), strength=0.5, blur_p=blur_p)
    return view, view


def _interleaved(fns: dict[str, Callable], rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU (all threads) seconds per call of each fn, timed in alternation so that load from
    other processes hits them alike."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                fn()
            wall[name].append((time.perf_counter() - t0) / reps)
            cpu[name].append((time.process_time() - c0) / reps)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in fns}


def augment_case(channels: int, size: int, batch: int, rounds: int, blur_p: float) -> dict:
    views = simclr_views(blur_p)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5,) * channels, (0.25,) * channels
    old, new = KorniaAugmenter(views, channels, size, mean, std), Augmenter(views, channels, size, mean, std)
    for aug in (old, new):  # warm-up
        aug(images)
    t = _interleaved({"old": lambda: old(images), "new": lambda: new(images)}, rounds, reps=5)
    out = {f"{k}_ms_per_view_{c}": round(1e3 * t[k][c] / len(views), 2) for k in t for c in ("wall", "cpu")}
    return {**out, "speedup_wall": round(t["old"]["wall"] / t["new"]["wall"], 2),
            "speedup_cpu": round(t["old"]["cpu"] / t["new"]["cpu"], 2)}


def _synthetic(channels: int, size: int, n: int = 1024) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return Dataset(f"synthetic-{channels}x{size}", x, y, x[:64], y[:64], [str(i) for i in range(10)])


def training_case(channels: int, size: int, batch: int, rounds: int, steps: int) -> dict:
    """One SimCLR ConvNet step (batch + step) with each augmenter swapped into the same trainer."""
    ds = _synthetic(channels, size)
    cfg = RunConfig(method="simclr", dataset=ds.name, batch_size=batch, protocols=())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(cfg, ds, tmp)
        new = trainer.augment
        mean, std = ds.mean_std()
        old = KorniaAugmenter(trainer.method.views, channels, size, mean, std, trainer.device)
        idx = torch.arange(batch)

        def step(aug):
            trainer.augment = aug
            trainer.step(trainer.batch(idx))

        step(old), step(new)  # warm-up
        t = _interleaved({"old": lambda: step(old), "new": lambda: step(new)}, rounds, reps=steps)
    out = {f"{k}_ms_per_step_{c}": round(1e3 * t[k][c], 1) for k in t for c in ("wall", "cpu")}
    return {**out, "old_img_per_s": round(batch / t["old"]["wall"]), "new_img_per_s": round(batch / t["new"]["wall"]),
            "throughput_ratio_wall": round(t["old"]["wall"] / t["new"]["wall"], 3),
            "throughput_ratio_cpu": round(t["old"]["cpu"] / t["new"]["cpu"], 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "rounds": args.rounds, "steps": args.steps, "load_average_at_start": list(os.getloadavg()),
           "augment": {}, "augment_blur": {}, "training": {}}
    for name, channels, size in CASES:
        out["augment"][name] = augment_case(channels, size, args.batch_size, args.rounds, blur_p=0.0)
        out["augment_blur"][name] = augment_case(channels, size, args.batch_size, args.rounds, blur_p=0.5)
        out["training"][name] = training_case(channels, size, args.batch_size, args.rounds, args.steps)
        print(name, json.dumps({k: out[k][name] for k in ("augment", "augment_blur", "training")}), flush=True)
    out["load_average_at_end"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
