"""The CI regression benchmark: a small fixed-seed, deterministic CPU suite compared with a committed baseline.

``repbench check`` runs the ``ci`` suite and compares every metric of every run with
``results/baselines/ci.json`` within the tolerance declared for it in tolerances.toml; a number that moves beyond its
tolerance is a regression (exit 1, one line each). ``repbench check --update`` rewrites the baseline on
purpose, after a change that is meant to move numbers (a method, protocol, the loop or the data).
"""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.records import is_number
from bench.runner import Options, run_many
from bench.store import REPO_ROOT, jsonable, provenance, read_json
from methods import METHODS
from protocols.limits import is_skipped

DEFAULT_BASELINE = REPO_ROOT / "results" / "baselines" / "ci.json"
BASELINE_FORMAT = 1
UPDATE_HINT = "if the change is intended, rewrite the baseline with 'repbench check --update' and commit {path}"
# Pinned so that a many-core CI runner reduces in the same order as the 2-core machines the baseline came from.
CHECK_THREADS = 2

# Methods: those whose file lists the dataset in ``ci_datasets``: the two floors (no training: they isolate the
# protocols and data), the supervised reference, SimCLR (batch negatives), BYOL (EMA teacher, predictor) and MoCo
# v2 (EMA key encoder, queue): between them they drive every part of the loop that keeps state across steps.
CI_DATASETS = ("digits", "fashion-mnist")
# Sizes: the protocols (the linear probe's and few-shot's regularisation sweeps above all) cost more than the
# training, and their cost grows with the training set; 60/30 images per class keeps the whole check to minutes.
CI_PER_CLASS, CI_TEST_PER_CLASS = 60, 30


def ci() -> list[RunConfig]:
    """The regression suite ``repbench check`` runs: fixed seed, deterministic, CPU, every registered protocol.

    Six methods on digits (600 train / 300 test images, 8x8) and two on Fashion-MNIST (600 / 300, 28x28), each
    2 epochs of batch 100 with the unified recipe, in float32 (amp=False: the baseline must not depend on whether
    a CPU has native bf16). The numbers are not benchmarks; they only have to stay put.
    Command: ``repbench check`` (minutes on 2 cores).
    """
    return [RunConfig(method=m, dataset=d, epochs=2, batch_size=100, seed=0, suite="ci", per_class=CI_PER_CLASS,
                      test_per_class=CI_TEST_PER_CLASS, deterministic=True, amp=False)
            for d in CI_DATASETS for m, cls in METHODS.items() if d in cls.ci_datasets]


# --------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerance:
    """``now`` passes when |now - baseline| <= abs + rel * |baseline|; ``compare=False`` records without comparing."""

    abs: float = 0.0
    rel: float = 0.0
    compare: bool = True

    def allows(self, base: Any, now: Any) -> bool:
        if not self.compare or base == now:
            return True
        if isinstance(base, list) and isinstance(now, list):  # per-draw / per-restart values: element by element
            return len(base) == len(now) and all(self.allows(b, n) for b, n in zip(base, now, strict=True))
        if is_number(base) and is_number(now):
            if math.isnan(base) or math.isnan(now):
                return False
            return abs(now - base) <= self.abs + self.rel * abs(base)
        return False

    def describe(self) -> str:
        if not self.compare:
            return "not compared"
        parts = ([f"±{self.abs:g}"] if self.abs else []) + ([f"±{self.rel:.1%} relative"] if self.rel else [])
        return " + ".join(parts) or "exact"


EXACT = Tolerance()

# The tolerances, in order, with why each is what it is: tolerances.toml beside this file (first match wins).
TOLERANCES: tuple[tuple[str, Tolerance, str], ...] = tuple(
    (t.pop("pattern"), Tolerance(**{k: v for k, v in t.items() if k != "why"}), t["why"])
    for t in tomllib.loads((Path(__file__).with_name("tolerances.toml")).read_text())["tolerance"])


def tolerance_for(metric: str) -> Tolerance:
    for pattern, tol, _why in TOLERANCES:
        if fnmatch.fnmatchcase(metric, pattern):
            return tol
    return EXACT


# --------------------------------------------------------------------------- records -> flat metrics


def label(cfg: RunConfig) -> str:
    """A run's name in the baseline: stable across edits that re-hash configs (run ids carry the hash)."""
    size = f"-{cfg.per_class}pc" if cfg.per_class else ""
    return f"{cfg.method}-{cfg.dataset}{size}-s{cfg.seed}"


def flat_metrics(record: dict) -> dict[str, Any]:
    """Every protocol value and setting as ``"<key>.<field>"``, plus the training outcome as ``train.*``."""
    rec = json.loads(json.dumps(jsonable(record)))  # exactly what a record.json holds (NaN as null)
    flat: dict[str, Any] = {"train.status": rec.get("status", "ok")}
    history = rec.get("training", {}).get("history") or []
    if history:
        last = history[-1]
        flat.update({"train.steps": last.get("step"), "train.loss": last.get("loss"),
                     "train.embed_std_ratio": last.get("embed_std_ratio"),
                     "train.effective_rank": last.get("effective_rank")})
    for key, entry in sorted(rec.get("metrics", {}).items()):
        if is_skipped(entry):  # no number to compare; a value that became a skip shows as one that vanished
            continue
        if isinstance(entry, dict):
            for field, value in entry.items():
                flat[f"{key}.{field}"] = value
        else:
            flat[key] = entry
    return flat


@dataclass(frozen=True)
class Regression:
    run: str
    metric: str
    baseline: Any
    now: Any
    tolerance: str

    def line(self) -> str:
        return (f"REGRESSION {self.run} {self.metric}: baseline {_show(self.baseline)}, now {_show(self.now)}, "
                f"tolerance {self.tolerance}")


def _show(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v)


_MISSING = object()


def compare(baseline: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> tuple[list[Regression], int]:
    """Regressions of ``now`` against ``baseline`` ({run: {metric: value}}) and the number of metrics compared."""
    out: list[Regression] = []
    n = 0
    for run in sorted(set(baseline) | set(now)):
        if run not in now:
            out.append(Regression(run, "(run)", "present", _MISSING, "the suite no longer has this run"))
            continue
        if run not in baseline:
            out.append(Regression(run, "(run)", _MISSING, "present", "a new run needs a baseline"))
            continue
        b, c = baseline[run], now[run]
        for metric in sorted(set(b) | set(c)):
            n += 1
            tol = tolerance_for(metric)
            if metric not in b or metric not in c:
                if tol.compare:
                    out.append(Regression(run, metric, b.get(metric, _MISSING), c.get(metric, _MISSING),
                                          "a metric appeared or vanished"))
            elif not tol.allows(b[metric], c[metric]):
                out.append(Regression(run, metric, b[metric], c[metric], tol.describe()))
    return out, n


# --------------------------------------------------------------------------- running


def load_baseline(path: Path) -> dict:
    if not path.exists():
        raise UsageError(f"no baseline at {path}; create it with 'repbench check --update' (or pass --baseline FILE)")
    base = read_json(path)
    if not isinstance(base, dict) or base.get("format") != BASELINE_FORMAT or not isinstance(base.get("runs"), dict):
        raise UsageError(f"{path} is not a repbench check baseline (format {BASELINE_FORMAT}); "
                         "rewrite it with 'repbench check --update'")
    for run, entry in base["runs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise UsageError(f"{path}: run {run!r} has no metrics object; rewrite it with 'repbench check --update'")
    return base


def run_suite(configs: list[RunConfig], out: Path, data_root: str | None = None, log=None) -> dict[str, dict]:
    """Run every config into ``out`` with CHECK_THREADS threads; returns {label: {"config_key", "metrics"}}."""
    names = [label(c) for c in configs]
    if len(set(names)) < len(names):
        raise ValueError(f"two runs of the suite share a label: {sorted(n for n in names if names.count(n) > 1)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(CHECK_THREADS)
    try:
        records = run_many(configs, out, Options(data_root=data_root), log=log)
    finally:
        torch.set_num_threads(threads)
    return {label(c): {"config_key": c.key(), "metrics": flat_metrics(records[c.run_id()])} for c in configs}


def config_drift(configs: list[RunConfig], baseline: dict) -> list[Regression]:
    """A baseline run made for another config than the suite's (its key matches neither the current nor the
    legacy key): the numbers would be compared against something else."""
    out = []
    for c in configs:
        entry = baseline["runs"].get(label(c))
        if entry is not None and "config_key" in entry and entry["config_key"] not in c.accepted_keys():
            out.append(Regression(label(c), "(config)", entry["config_key"], c.key(),
                                  "the suite's config changed since the baseline was written"))
    return out


def baseline_document(suite: str, runs: dict[str, dict]) -> dict:
    prov = provenance(0, "cpu")
    keep = ("git_sha", "git_dirty", "python", "torch", "torchvision", "device_name", "time", "host")
    return {"format": BASELINE_FORMAT, "suite": suite, "threads": CHECK_THREADS,
            "note": "written by 'repbench check --update'; tolerances are declared in bench/check.py (TOLERANCES)",
            "provenance": {k: prov[k] for k in keep}, "runs": runs}
