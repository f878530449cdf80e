"""Steady-state training throughput: repbench's in-memory batched pipeline, and the per-image
pipeline popular SSL libraries use (PIL transforms in DataLoader workers), on the same model step.

An image counts once however many views it is augmented into.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from bench.config import RunConfig
from bench.data import Dataset
from bench.runner import build_method
from bench.train import Trainer
from methods.base import Batch


@dataclass
class Throughput:
    images_per_s: float
    data_wait_share: float
    steps: int
    batch_size: int

    def line(self) -> str:
        wait = 100 * self.data_wait_share
        return f"{self.images_per_s:.0f} img/s (data wait {wait:.1f}%, {self.steps} steps of {self.batch_size})"


def build(cfg: RunConfig, ds: Dataset, run_dir) -> Trainer:
    method = build_method(cfg, ds)
    method.train()
    return Trainer(method, ds, cfg, run_dir, progress=False)


def _timed_steps(trainer: Trainer, batches, steps: int, warmup: int) -> Throughput:
    data_s = compute_s = 0.0
    n = 0
    it = iter(batches)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        trainer.sync()
        t1 = time.perf_counter()
        trainer.step(batch)
        trainer.sync()
        if i >= warmup:
            data_s += t1 - t0
            compute_s += time.perf_counter() - t1
            n += len(batch.labels)
    total = data_s + compute_s
    return Throughput(n / total, data_s / total, steps, trainer.cfg.batch_size)


def measure(trainer: Trainer, steps: int, warmup: int = 5) -> Throughput:
    """repbench's path: the training loop's uint8 batches (resident or streamed), augmented batched on the device."""

    def batches():
        g = torch.Generator().manual_seed(0)
        while True:
            order = torch.randperm(len(trainer.source), generator=g)
            for fetched in trainer.source.batches(order, trainer.cfg.batch_size, trainer.steps_per_epoch):
                yield trainer.batch(*fetched)

    return _timed_steps(trainer, batches(), steps, warmup)


class _PerImageViews(torch.utils.data.Dataset):
    """The per-image recipe: decode to PIL, augment each view separately in a worker process."""

    def __init__(self, ds: Dataset, n_views: int, mean, std, scale_min: float) -> None:
        from torchvision import transforms as T

        self.x, self.y, self.n_views = ds.train_x, ds.train_y, n_views
        size = ds.image_size
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(scale_min, 1.0)), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8), T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.x[i].squeeze(0).numpy() if self.x.shape[1] == 1 else self.x[i].permute(1, 2, 0).numpy())
        return [self.transform(img) for _ in range(self.n_views)], self.y[i], i


def measure_per_image(trainer: Trainer, steps: int, warmup: int = 5, workers: int = 2) -> Throughput:
    views = trainer.method.views
    mean, std = trainer.ds.mean_std()
    scale_min = views[0].scale[0] if views else 0.08
    loader = DataLoader(_PerImageViews(trainer.ds, len(views), mean, std, scale_min), batch_size=trainer.cfg.batch_size,
                        shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0)

    def batches():
        while True:
            for vs, y, idx in loader:
                dev = trainer.device
                # Same memory format as repbench's path, so only the data pipeline differs.
                views = [v.to(dev).contiguous(memory_format=torch.channels_last) for v in vs]
                yield Batch(views=views, images=vs[0].to(dev), labels=y.to(dev), index=idx.to(dev))

    return _timed_steps(trainer, batches(), steps, warmup)
