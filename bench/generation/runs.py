"""A finished run's method and data, and the frozen features the decoder is conditioned on."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data import Dataset, load_dataset
from bench.features import extract
from bench.runner import build_method, read_run_config
from bench.store import load_checkpoint
from bench.train import CHECKPOINT
from methods import METHODS
from methods.base import Method


@dataclass
class Run:
    path: Path
    cfg: RunConfig
    method: Method
    ds: Dataset

    @property
    def name(self) -> str:
        return self.path.name

    def features(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Backbone features (what every protocol sees) of uint8 images, (N, C, H, W) -> (N, D)."""
        return extract(self.method.encoder, images_u8, *self.ds.mean_std())


def check_checkpoint(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The run's checkpoint; None for the floors (raw pixels, random init), which are rebuilt from their seed."""
    if METHODS.get(cfg.method).trained_by == "none":
        return None
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {CHECKPOINT}; rerun its training (repbench run ...) to write one")
    return path


@functools.lru_cache(maxsize=2)
def dataset(name: str, data_root: str | None, per_class: int | None, test_per_class: int | None,
            image_size: int | None) -> Dataset:
    """The run's data, loaded once per process: the seeds of one suite share it."""
    return load_dataset(name, data_root, per_class, test_per_class, image_size)


def load_run(run_dir: Path, data_root: str | None) -> Run:
    """The run's method with its weights (the floors at their seeded initialisation), in eval mode, on the CPU."""
    cfg = read_run_config(run_dir)
    ckpt = check_checkpoint(run_dir, cfg)
    ds = dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class, cfg.image_size)
    method = build_method(replace(cfg, device="cpu"), ds)
    if ckpt is not None:
        try:
            method.load_state_dict(load_checkpoint(ckpt)["model"])
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise UsageError(f"{ckpt} does not fit method {cfg.method!r} as this code builds it ({first})") from None
    return Run(run_dir, cfg, method.eval(), ds)
