"""The one training loop every method runs through.

Training images are uint8, resident on the device or, when memory-mapped or too large, streamed from the host
(bench/data/stream.py); each step takes a batch by index and augments it batched on the device. The loop owns
optimiser, schedule, precision, checkpoints, the throughput meter, the watchdogs (divergence, collapse), the
monitors measured beside training (bench/monitor.py) and the training logs (bench/logs.py). A step never waits on
the device: losses, meters and the divergence check stay there until the reads every ``log_every`` steps and at
each epoch's end (bench/steps.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench import collapse, ddp
from bench.augment import Augmenter
from bench.config import RunConfig, TrainOptions
from bench.core.errors import UsageError
from bench.data import Dataset
from bench.data.stream import training_source
from bench.logs import StepLog, TrainLog
from bench.monitor import Monitor, wanted
from bench.optim import apply_recipe_step, build_optimizer, build_scheduler
from bench.steps import Guard, Meter, PendingSteps, StepTimer, precision_for
from bench.store import load_checkpoint, remove_stale_temps, save_checkpoint
from methods.base import Batch, Method, TextTower

CHECKPOINT = "checkpoint.pt"
COLLAPSE_STD_RATIO = collapse.STD_RATIO_MIN  # the name tests and callers know


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
    """The collapse signals (bench/collapse.py) of the method's ``collapse_outputs`` and of its backbone's features
    on the probe, in eval mode."""
    was = method.training
    method.eval()
    outputs = {**method.collapse_outputs(probe), "features": method.encoder(probe)}
    method.train(was)
    return collapse.signals(outputs)


class Trainer:
    def __init__(self, method: Method, ds: Dataset, cfg: RunConfig, run_dir: Path, progress: bool = True,
                 opts: TrainOptions | None = None) -> None:
        self.method, self.ds, self.cfg, self.run_dir, self.progress = method, ds, cfg, Path(run_dir), progress
        self.opts = opts = opts or TrainOptions()
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
        self.precision = precision_for(cfg.precision, cfg.amp, self.device, method.float32_on_cpu())
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.scaler else None
        self.compiled = torch.compile(method.training_step) if opts.compile else None
        self.guard, self.timer, self.pending = Guard(self.device), StepTimer(self.device), PendingSteps()
        self.steplog = StepLog(self.run_dir)  # written from fit on; a bare run_epoch (searches) logs nothing
        self.log: TrainLog | None = None
        self.meter, self.lr, self.epoch_losses = Meter(), 0.0, []
        self.state = TrainState()
        # kNN every N epochs and the online probe: measured beside training, never changing it (bench/monitor.py).
        self.monitor = Monitor(method, ds, cfg, self.steps_per_epoch, self.total_steps) if wanted(cfg) else None

    @property
    def amp(self) -> bool:  # bfloat16 autocast on: the name older callers know
        return self.precision.dtype == torch.bfloat16

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "model": self.method.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "epoch": self.state.epoch, "step": self.state.step,
            "status": self.state.status, "status_detail": self.state.status_detail,
            "history": self.state.history, "rng": rng_state(), "config_key": self.cfg.key(),
            "meter": self.meter.__dict__, **({"monitor": self.monitor.state_dict()} if self.monitor else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
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
            if self.scaler and "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
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
        """One optimiser step, queued on the device without waiting for it; from the first non-finite loss on,
        the update is skipped there (bench/steps.py), and the host learns of it at its next poll or read."""
        watch = self.monitor.watching(len(batch.labels)) if self.monitor else contextlib.nullcontext()
        with self.precision.autocast(self.device), watch:
            out = (self.compiled or self.method.training_step)(batch)
        loss = out["loss"]
        self.guard.see(loss)
        self.lr = self.opt.param_groups[0]["lr"]
        self.opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.guard.poison(self.opt)
            self.scaler.unscale_(self.opt)  # clipping below sees the true gradients
        else:
            loss.backward()
        ddp.average_gradients(self.method.parameters())  # the mean over torchrun's ranks (bench/ddp.py)
        apply_recipe_step(self.opt, self.method.parameters(), self.state.step, self.total_steps, self.cfg.recipe)
        self.guard.update(self.opt, self.scaler)
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
        self.epoch_losses = []
        bar = tqdm(range(self.steps_per_epoch), desc=f"{self.cfg.method} ep {epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for _ in bar:
            self.timer.mark()
            batch = self.batch(*next(fetch))  # waits here when a streamed batch is not ready yet
            self.timer.mark()
            out = self.step(batch)
            self.timer.mark()
            self.pending.add(self.state.step, epoch + 1, self.lr, len(batch.labels), out)
            if (self.guard.poll() or self.state.step % self.opts.log_every == 0) and not self.read(bar):
                return
        if not self.read(bar):
            return
        entry = {"epoch": epoch + 1, "step": self.state.step, "loss": float(np.mean(self.epoch_losses)),
                 "lr": self.opt.param_groups[0]["lr"], **collapse_stats(self.method, self.probe)}
        previous = self.state.history[-1] if self.state.history else None
        self.state.history.append(entry)
        collapsed, reason = collapse.verdict(entry, previous)
        if collapsed:
            self.state.status, self.state.status_detail = "collapsed", {"reason": reason, **entry}

    def read(self, bar: tqdm) -> bool:
        """The pending steps to the host (one transfer): meters, steps.csv, sinks, progress. False, and the run
        marked diverged at its first non-finite step, when one of them was; the steps queued after it are dropped."""
        rows = self.pending.read(self.timer)
        bad = next((i for i, r in enumerate(rows) if not math.isfinite(r["loss"])), None)
        rows = rows if bad is None else rows[:bad + 1]
        for r in rows:
            self.meter.data_s, self.meter.compute_s = self.meter.data_s + r["data_s"], self.meter.compute_s + r["compute_s"]
            self.meter.images += r["images"]
        self.epoch_losses += [r["loss"] for r in rows if math.isfinite(r["loss"])]
        if self.log:
            self.log.rows(rows, bar)
        if bad is None:
            return True
        last = rows[-1]
        self.state.status = "diverged"
        self.state.status_detail = {"step": last["step"], "epoch": last["epoch"], "loss": str(last["loss"])}  # "nan"/"inf"
        self.state.step = last["step"] - 1  # the finite steps taken; the device skipped the rest
        return False

    def fit(self, resume: bool = False) -> TrainState:
        if resume:
            self.restore()
        if self.state.status == "ok":  # a run that diverged or collapsed before has nothing more to train or log
            self.log = TrainLog(self.steplog, self.cfg, self.opts.log, self.opts.lines, self.total_steps, self.state.step)
            try:
                self.loop()
            finally:
                self.log.close()
        if self.device.type == "cuda":
            self.meter.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.meter.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.state

    def loop(self) -> None:
        self.method.train()
        while self.state.epoch < self.cfg.epochs and self.state.status == "ok":
            self.run_epoch(self.state.epoch)
            self.state.epoch += 1
            if self.monitor and self.state.status != "diverged":
                final = self.state.epoch == self.cfg.epochs or self.state.status != "ok"
                self.monitor.after_epoch(self.state.epoch, final, self.state.history)
            if self.state.history and self.state.history[-1]["epoch"] == self.state.epoch:
                self.log.epoch(self.state.history[-1])
            self.save()

    def summary(self) -> dict[str, Any]:
        warmup = round(self.cfg.recipe.warmup_epochs * self.steps_per_epoch)
        return {"steps": self.state.step, "epochs": self.state.epoch, "steps_per_epoch": self.steps_per_epoch,
                "autocast_bf16": self.amp, "precision": self.precision.name,
                "grad_scaler": self.scaler is not None, "compiled": self.opts.compile, "log_every": self.opts.log_every,
                "lr": self.cfg.recipe.scaled_lr(self.cfg.batch_size), "warmup_steps": min(warmup, self.total_steps // 10),
                "history": self.state.history, **({"monitor_s": round(self.monitor.seconds, 2)} if self.monitor else {})}
