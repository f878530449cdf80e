"""What a training step needs so the host never waits on the device between reads.

Per step everything stays on the device: the loss and every scalar the method returns are kept as tensors, the
finiteness of the loss gates the optimiser's update on the device (so a non-finite step never touches the
weights), and CUDA events time the step. The host reads it all at once every ``log_every`` steps and at each
epoch's end (``PendingSteps.read``), one synchronisation per read. Between reads it only polls, without waiting,
whether the device has seen a non-finite loss (``Guard.poll``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.device import native_bf16


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: float32) and whether a gradient scaler guards float16's narrow range."""

    name: str
    dtype: torch.dtype | None
    scaler: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()


def precision_for(precision: str, amp: bool, device: torch.device, float32_on_cpu: bool) -> Precision:
    """bf16: autocast where bfloat16 is native and the model is not one that runs slower so on a CPU, else
    float32; fp16: float16 autocast with torch.amp.GradScaler; fp32 (or ``amp`` off, as older configs say): none."""
    if not amp or precision == "fp32":
        return Precision("fp32", None, False)
    if precision == "fp16":
        return Precision("fp16", torch.float16, True)
    native = native_bf16(device) and not (device.type == "cpu" and float32_on_cpu)
    return Precision("bf16" if native else "fp32", torch.bfloat16 if native else None, False)


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


class Guard:
    """A device flag that turns off at the first non-finite loss and, from then on, skips every update."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.alive = torch.ones((), dtype=torch.bool, device=device)
        cuda = device.type == "cuda"
        self.host = torch.ones((), dtype=torch.bool, pin_memory=cuda)
        self.copied: torch.cuda.Event | None = None

    def see(self, loss: torch.Tensor) -> None:
        self.alive.logical_and_(torch.isfinite(loss.detach()))

    def poison(self, opt: torch.optim.Optimizer) -> None:
        """With a gradient scaler, before its unscale: non-finite gradients make it skip the step, as for an overflow."""
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_add_(grads, torch.where(self.alive, 0.0, math.nan))

    def update(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
        """The optimiser's step, applied on the device only while every loss so far was finite."""
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        elif all(g.get("fused") for g in opt.param_groups):
            # Fused optimisers take GradScaler's found_inf and skip the update on the device when it is set.
            opt.found_inf, opt.grad_scale = (~self.alive).float(), None
            opt.step()
        else:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            kept = [p.detach().clone() for p in params]
            opt.step()
            with torch.no_grad():
                for p, old in zip(params, kept, strict=True):
                    p.copy_(torch.where(self.alive, p, old))

    def poll(self) -> bool:
        """True once the device has seen a non-finite loss, as far as the host can tell without waiting: at
        once on a CPU, within a few steps on CUDA (the flag's copy to pinned memory lands asynchronously)."""
        if self.device.type != "cuda":
            return not self.alive.numpy()[()]
        if self.copied is not None and not self.copied.query():
            return False
        dead = not self.host.numpy()[()]
        self.host.copy_(self.alive, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        return dead


class StepTimer:
    """Data wait and compute per step: CUDA events on a GPU (read at the next read, never waited for per step),
    the host's clock on a CPU, where there is nothing to wait for."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[Any, Any, Any]] = []
        self.current: list[Any] = []

    def mark(self) -> None:
        """Call at the step's start, when its batch is ready, and at its end."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.current.append(event)
        else:
            self.current.append(time.perf_counter())
        if len(self.current) == 3:
            self.marks.append(tuple(self.current))
            self.current = []

    def read(self) -> list[tuple[float, float]]:
        """(data seconds, compute seconds) of each step since the last read."""
        marks, self.marks = self.marks, []
        if self.cuda and marks:
            marks[-1][2].synchronize()
            return [(a.elapsed_time(b) / 1e3, b.elapsed_time(c) / 1e3) for a, b, c in marks]
        return [(b - a, c - b) for a, b, c in marks]


class PendingSteps:
    """The steps since the last read: their losses and the method's other scalar outputs, still on the device."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, step: int, epoch: int, lr: float, images: int, out: dict[str, Any]) -> None:
        scalars = {k: v.detach().reshape(()) if isinstance(v, torch.Tensor) else v for k, v in out.items()
                   if (isinstance(v, torch.Tensor) and v.numel() == 1) or isinstance(v, (int, float))}
        self.steps.append({"step": step, "epoch": epoch, "lr": lr, "images": images, "scalars": scalars})

    def __len__(self) -> int:
        return len(self.steps)

    def read(self, timer: StepTimer) -> list[dict[str, Any]]:
        """One row per step: step, epoch, loss, lr, images, data_s, compute_s, then the method's other keys;
        the device tensors all come over in one transfer."""
        steps, self.steps = self.steps, []
        tensors = [v for s in steps for v in s["scalars"].values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float() for t in tensors]).cpu().tolist() if tensors else [])
        rows = []
        for s, (data_s, compute_s) in zip(steps, timer.read(), strict=True):
            scalars = {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in s["scalars"].items()}
            rows.append({"step": s["step"], "epoch": s["epoch"], "loss": scalars.pop("loss"), "lr": s["lr"],
                         "images": s["images"], "data_s": data_s, "compute_s": compute_s, **scalars})
        return rows
