"""Training logs: steps.csv in every run folder, optional TensorBoard and W&B sinks, progress lines for logs that
are not a terminal. All of them are fed at the loop's reads (every ``log_every`` steps and each epoch's end), never
per step, so they add no host synchronisation."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.store import atomic_write_bytes

STEPS_CSV = "steps.csv"
BASE_COLUMNS = ("step", "epoch", "loss", "lr", "images_per_s")
# Each sink and the package it needs.
SINKS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_sinks(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in SINKS:
            raise UsageError(f"--log {name!r} is not a log sink; choose from {', '.join(SINKS)}")
        try:
            found = importlib.util.find_spec(SINKS[name]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"--log {name} needs the {SINKS[name]} package, which is not installed; "
                             f"pip install {SINKS[name]}, or drop --log {name}")


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A read row (bench/steps.py) as steps.csv holds it: images per second instead of images and seconds."""
    seconds = row["data_s"] + row["compute_s"]
    extra = {k: v for k, v in row.items() if k not in (*BASE_COLUMNS, "images", "data_s", "compute_s")}
    return {"step": row["step"], "epoch": row["epoch"], "loss": row["loss"], "lr": row["lr"],
            "images_per_s": round(row["images"] / seconds, 1) if seconds > 0 else 0.0, **extra}


class StepLog:
    """``steps.csv``: one row per optimiser step, appended at each read; the columns widen when a step returns a
    key not seen before. On resume, the rows past the checkpoint's step go, so no step is written twice."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STEPS_CSV
        self.columns: list[str] = []

    def keep_until(self, step: int) -> None:
        """Drop the rows after ``step`` (0: all), as the run restarts from there."""
        rows = self.rows() if step > 0 and self.path.exists() else []
        try:
            # A row a kill cut short lacks fields; the rows up to the checkpoint were complete before it was saved.
            kept = [r for r in rows if None not in r.values() and int(r["step"]) <= step]
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{self.path} is not a steps log this code wrote (no whole-number step column); "
                             "move it away to resume") from None
        self.columns = list(csv.DictReader(io.StringIO(self.path.read_text())).fieldnames or []) if kept else []
        if kept or self.path.exists():
            self._rewrite(kept)

    def rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        new = [k for r in rows for k in r if k not in self.columns]
        if new or not self.path.exists():
            old = self.rows() if self.path.exists() and self.columns else []
            self.columns = list(BASE_COLUMNS) + sorted({*self.columns, *new} - set(BASE_COLUMNS))
            self._rewrite(old + rows)
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerows(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns or list(BASE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())


class Sinks:
    """TensorBoard (torch.utils.tensorboard, event files under ``<run>/tensorboard``) and W&B (a run under
    ``<run>/wandb``; offline when WANDB_MODE=offline), fed with the same rows as steps.csv and each epoch's entry."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, cfg: RunConfig) -> None:
        check_sinks(names)
        self.tb = self.wandb = None
        if "tensorboard" in names:
            tensorboard = importlib.import_module("torch.utils.tensorboard")
            self.tb = tensorboard.SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if "wandb" in names:
            wandb = importlib.import_module("wandb")
            self.wandb = wandb.init(project="repbench", name=cfg.run_id(), id=cfg.run_id(), dir=str(run_dir),
                                    config=cfg.to_dict(), resume="allow", reinit="finish_previous")

    def rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            scalars = {f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch") and _number(v)}
            self._log(scalars, row["step"])

    def epoch(self, entry: dict[str, Any]) -> None:
        self._log({f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "step") and _number(v)},
                  entry["step"])

    def _log(self, scalars: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Progress:
    """One line per read for logs that are not a terminal: where the run is, its loss, speed, elapsed and ETA."""

    def __init__(self, name: str, total_steps: int, done: int) -> None:
        self.name, self.total, self.start_step, self.t0 = name, total_steps, done, time.perf_counter()

    def line(self, epoch: int, epochs: int, step: int, loss: float, images_per_s: float) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done > 0 else math.nan
        return (f"{self.name} epoch {epoch}/{epochs} step {step}/{self.total} loss {loss:.4f} "
                f"img/s {images_per_s:.0f} elapsed {clock(elapsed)} eta {clock(eta)}")


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainLog:
    """What a fitted run logs at each read: steps.csv, the sinks asked for, the progress bar's numbers and, when
    asked, a progress line on stderr."""

    def __init__(self, steps: StepLog, cfg: RunConfig, sinks: tuple[str, ...], lines: bool, total_steps: int,
                 done: int) -> None:
        self.cfg, self.steps = cfg, steps
        self.steps.keep_until(done)
        # The device in every line: a job's log says where it trains from its first line on.
        self.lines = Progress(f"{cfg.run_id()} on {cfg.device}", total_steps, done) if lines else None
        self.sinks = Sinks(sinks, steps.path.parent, cfg) if sinks else None

    def rows(self, rows: list[dict[str, Any]], bar: Any) -> None:
        logged = [csv_row(r) for r in rows]
        self.steps.append(logged)
        if self.sinks:
            self.sinks.rows(logged)
        if logged:
            last, speed = logged[-1], sum(r["images_per_s"] for r in logged) / len(logged)
            bar.set_postfix(loss=f"{last['loss']:.3f}", img_s=f"{speed:.0f}")
            if self.lines:
                print(self.lines.line(last["epoch"], self.cfg.epochs, last["step"], last["loss"], speed),
                      file=sys.stderr, flush=True)

    def epoch(self, entry: dict[str, Any]) -> None:
        if self.sinks:
            self.sinks.epoch(entry)

    def close(self) -> None:
        if self.sinks:
            self.sinks.close()
