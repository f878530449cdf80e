"""The one training loop every method runs through.

Training images are uint8, resident on the device or, when memory-mapped or too large, streamed from the host
(bench/data/stream.py); each step takes a batch by index and augments it batched on the device. The loop owns
optimiser, schedule, AMP, checkpoints, the throughput meter, the watchdogs (divergence, collapse) and the monitors
measured beside training (bench/monitor.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench import collapse
from bench.augment import Augmenter
from bench.config import RunConfig
from bench.core.device import native_bf16
from bench.core.errors import UsageError
from bench.data import Dataset
from bench.data.stream import training_source
from bench.monitor import Monitor, wanted
from bench.optim import apply_recipe_step, build_optimizer, build_scheduler
from bench.store import load_checkpoint, remove_stale_temps, save_checkpoint
from methods.base import Batch, Method, TextTower

CHECKPOINT = "checkpoint.pt"
COLLAPSE_STD_RATIO = collapse.STD_RATIO_MIN  # the name tests and callers know


@dataclass
class Meter:
    """Throughput: images per second (an image in two views counts once) and the data-wait share."""

    images: int = 0
    data_s: float = 0.0
    compute_s: float = 0.0
    peak_mem_mb: float = 0.0

    def summary(self) -> dict[str, float]:
        total = self.data_s + self.compute_s
        return {"images": self.images, "seconds": round(total, 3),
                "images_per_s": round(self.images / total, 1) if total else 0.0,
                "data_wait_share": round(self.data_s / total, 4) if total else 0.0,
                "peak_mem_mb": round(self.peak_mem_mb, 1)}


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    status: str = "ok"  # ok | diverged | collapsed
    status_detail: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Set both ways: a run without --deterministic in the same process as one with it must not inherit it.
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    # Filling every new tensor with NaN only exposes ops that read uninitialised memory (none here: the
    # determinism and resume tests compare bit for bit); it made CPU steps markedly slower.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if deterministic:
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    # Tensors, ints and tuples only: checkpoints are loaded with weights_only=True, which refuses numpy objects.
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def collapse_stats(method: Method, probe: torch.Tensor) -> dict[str, float]:
    """The collapse signals (bench/collapse.py) of the method's ``collapse_outputs`` on the probe, in eval mode."""
    was = method.training
    method.eval()
    outputs = method.collapse_outputs(probe)
    method.train(was)
    return collapse.signals(outputs)


class Trainer:
    def __init__(self, method: Method, ds: Dataset, cfg: RunConfig, run_dir: Path, progress: bool = True) -> None:
        self.method, self.ds, self.cfg, self.run_dir, self.progress = method, ds, cfg, Path(run_dir), progress
        method.to(memory_format=torch.channels_last)
        self.device = torch.device(cfg.device)
        # Pre-training images (train + unlabeled unless the method reads labels): resident on the device, or streamed
        # from the host when memory-mapped or too large (bench/data/stream.py); same batches either way.
        self.source = training_source(ds, self.device, labelled_only=method.uses_labels)
        self.labels = self.source.labels
        mean, std = ds.mean_std()
        self.augment = Augmenter(method.views, ds.channels, ds.image_size, mean, std, self.device)
        self.text = method.train_tokens if isinstance(method, TextTower) else None
        self.steps_per_epoch = max(1, len(self.source) // cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.opt = build_optimizer(method, cfg.recipe, cfg.batch_size)
        self.sched = build_scheduler(self.opt, cfg.recipe, self.total_steps, self.steps_per_epoch)
        g = torch.Generator().manual_seed(cfg.seed)
        probe_idx = torch.randperm(len(self.source), generator=g)[:512]
        self.probe = self.augment.normalise(self.source.gather(probe_idx))
        self.amp = cfg.amp and native_bf16(self.device) and not (self.device.type == "cpu" and method.float32_on_cpu())
        self.meter = Meter()
        self.state = TrainState()
        # kNN every N epochs and the online probe: measured beside training, never changing it (bench/monitor.py).
        self.monitor = Monitor(method, ds, cfg, self.steps_per_epoch, self.total_steps) if wanted(cfg) else None

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "model": self.method.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "epoch": self.state.epoch, "step": self.state.step,
            "status": self.state.status, "status_detail": self.state.status_detail,
            "history": self.state.history, "rng": rng_state(), "config_key": self.cfg.key(),
            "meter": self.meter.__dict__, **({"monitor": self.monitor.state_dict()} if self.monitor else {}),
        })

    def restore(self) -> bool:
        path = self.run_dir / CHECKPOINT
        remove_stale_temps(self.run_dir)
        if not path.exists():
            return False
        ckpt = load_checkpoint(path)
        if ckpt.get("config_key") not in self.cfg.accepted_keys():
            raise UsageError(f"checkpoint {path} belongs to another configuration; delete it or rerun without --resume")
        try:
            self.method.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.state = TrainState(ckpt["epoch"], ckpt["step"], ckpt["status"], ckpt["status_detail"], ckpt["history"])
            self.meter = Meter(**ckpt["meter"])
            set_rng_state(ckpt["rng"])
            if self.monitor and "monitor" in ckpt:  # a checkpoint of a run without monitors: they start now
                self.monitor.load_state_dict(ckpt["monitor"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            # Same config, different code (a method gained a buffer, say): the state cannot be put back exactly.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"checkpoint {path} does not fit this code's model or optimizer ({first}); "
                             "delete it to start over, or rerun without --resume") from None
        return True

    # -- the loop ----------------------------------------------------------------------------

    def batch(self, idx: torch.Tensor, x: torch.Tensor | None = None) -> Batch:
        """The batch of images ``idx`` (on the device); ``x``: those images when already fetched."""
        x = self.source.gather(idx) if x is None else x
        # channels_last: faster convnet steps on CPUs too, not only on GPUs (results/benchmarks/throughput.md).
        views = [v.contiguous(memory_format=torch.channels_last) for v in self.augment(x)]
        images = self.augment.normalise(x)
        text = self.text[idx.to(self.text.device)].to(self.device) if self.text is not None else None
        return Batch(views=views, images=images, labels=self.labels[idx], index=idx, text=text)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        watch = self.monitor.watching(len(batch.labels)) if self.monitor else contextlib.nullcontext()
        with autocast, watch:
            out = self.method.training_step(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            return out
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        apply_recipe_step(self.opt, self.method.parameters(), self.state.step, self.total_steps, self.cfg.recipe)
        self.opt.step()
        self.sched.step()
        if self.monitor:
            self.monitor.after_step(batch.labels, self.state.step)
        self.state.step += 1
        self.method.on_step_end(self.state.step, self.total_steps)
        return out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run_epoch(self, epoch: int) -> None:
        # The epoch's order depends only on (seed, epoch): a resumed run sees the same batches.
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.source), generator=g)
        fetch = self.source.batches(order, self.cfg.batch_size, self.steps_per_epoch)
        losses = []
        bar = tqdm(range(self.steps_per_epoch), desc=f"{self.cfg.method} ep {epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for i in bar:
            t0 = time.perf_counter()
            batch = self.batch(*next(fetch))  # waits here when a streamed batch is not ready yet
            self.sync()
            t1 = time.perf_counter()
            out = self.step(batch)
            loss = float(out["loss"].detach())
            self.sync()
            self.meter.data_s += t1 - t0
            self.meter.compute_s += time.perf_counter() - t1
            self.meter.images += len(batch.labels)
            if not math.isfinite(loss):
                self.state.status = "diverged"
                self.state.status_detail = {"step": self.state.step + 1, "epoch": epoch + 1, "loss": str(loss)}  # "nan"/"inf"
                return
            losses.append(loss)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{self.meter.summary()['images_per_s']:.0f}")
        entry = {"epoch": epoch + 1, "step": self.state.step, "loss": float(np.mean(losses)),
                 "lr": self.opt.param_groups[0]["lr"], **collapse_stats(self.method, self.probe)}
        previous = self.state.history[-1] if self.state.history else None
        self.state.history.append(entry)
        collapsed, reason = collapse.verdict(entry, previous)
        if collapsed:
            self.state.status, self.state.status_detail = "collapsed", {"reason": reason, **entry}

    def fit(self, resume: bool = False) -> TrainState:
        if resume:
            self.restore()
        self.method.train()
        while self.state.epoch < self.cfg.epochs and self.state.status == "ok":
            self.run_epoch(self.state.epoch)
            self.state.epoch += 1
            if self.monitor and self.state.status != "diverged":
                final = self.state.epoch == self.cfg.epochs or self.state.status != "ok"
                self.monitor.after_epoch(self.state.epoch, final, self.state.history)
            self.save()
        if self.device.type == "cuda":
            self.meter.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.meter.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.state

    def summary(self) -> dict[str, Any]:
        warmup = round(self.cfg.recipe.warmup_epochs * self.steps_per_epoch)
        return {"steps": self.state.step, "epochs": self.state.epoch, "steps_per_epoch": self.steps_per_epoch,
                "autocast_bf16": self.amp,
                "lr": self.cfg.recipe.scaled_lr(self.cfg.batch_size), "warmup_steps": min(warmup, self.total_steps // 10),
                "history": self.state.history, **({"monitor_s": round(self.monitor.seconds, 2)} if self.monitor else {})}
