"""Hyperparameter search with Optuna: one study per (method, search suite, trial budget).

``repbench search --method M --suite S --trials N [--storage URL] [--study NAME] [--out DIR]`` and
``repbench search --methods all --trials N``.

- Space: bench/experiments/search_space.py (shared knobs + the method's own), the paper's point enqueued as trial 0.
- Sampler: TPESampler seeded, with ``multivariate=True`` and ``constant_liar=True`` set explicitly (Optuna 5
  changed both defaults; the version is pinned in pyproject.toml). Pruner: median (default) or Hyperband,
  fed the validation score after every epoch.
- Objective: weighted k-NN top-1 (k=20) on a stratified validation split carved from the TRAINING subset;
  the method trains on the rest. The test split is dropped from the data the objective sees.
- A trial whose loss turns NaN/inf (``diverged``), whose embeddings collapse, whose features are not
  finite, or whose training raises, FAILS with the reason in ``trial.user_attrs["fail_reason"]``.
- Storage: bench/experiments/storage.py; opening a study: bench/experiments/study.py. ``--trials N`` is the
  study's total over every worker (COMPLETE, PRUNED and FAIL count, less a stale trial whose retry replaced it);
  rerunning the same command continues the study.
- Workers lose and duplicate nothing: the study's creator draws from --sampler-seed, any other worker from a fresh
  random seed (logged, and in each trial's ``user_attrs["sampler_seed"]``); on database storages a killed worker's
  trial misses its heartbeats and the next worker fails it and retries its parameters; a reused study is checked
  (direction, method, scale) before anything is written; one enqueued trial is never run twice.
- After the search, the best configuration is re-run with fresh seeds on the full training subset and
  scored on the test split (recipe name ``tuned``); ``repbench ablate --grid recipe --tuned <out>/runs``
  puts these beside the paper and unified recipes. Reports: bench/experiments/search_report.py.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

from bench.config import RunConfig
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.core.registry import Registry
from bench.core.splits import stratified_split
from bench.data import Dataset, load_dataset
from bench.experiments.ablate import quick_methods
from bench.experiments.scales import METRIC, SCALES, Scale, metric_of, scaled_config
from bench.experiments.search_report import FRESH_SEED_BASE, best_trial, short, study_report, write_summary
from bench.experiments.search_space import paper_defaults, suggest, to_config
from bench.experiments.storage import StorageSpec, parse_storage
from bench.experiments.study import FINISHED as FINISHED  # re-exported: callers count trials with it
from bench.experiments.study import BudgetCallback, OverBudget, check_reuse, counted, make_pruner, open_study, study_attrs
from bench.experiments.study import make_sampler as make_sampler
from bench.features import extract
from bench.runner import Options, build_method, run_many, validate
from bench.store import jsonable
from bench.train import Trainer
from methods import METHODS
from protocols import PROTOCOLS
from protocols.base import Features
from protocols.limits import is_skipped


@dataclass(frozen=True)
class SearchSuite:
    name: str
    scale: Scale
    trials: int  # default budget (the study's total)
    names: tuple[str, ...] = ()  # searched when neither --method nor --methods is given; () = the quick budget
    val_fraction: float = 0.2
    seed: int = 0  # training seed of every trial: trials differ only by their hyperparameters

    @property
    def methods(self) -> tuple[str, ...]:
        return self.names or quick_methods()

    def base(self, method: str, device: str = "cpu") -> RunConfig:
        """The method's paper recipe at this scale: the space is centred on it."""
        return scaled_config(self.scale, method, "paper", seed=self.seed, device=device, protocols=(METRIC,),
                             suite=f"search-{self.name}")


SEARCH_SUITES: Registry[SearchSuite] = Registry("search suite", {
    "smoke": SearchSuite("smoke", SCALES["smoke"], trials=3, names=("simclr", "supervised")),
    # The quick budget's methods (Method.quick_budget) at quick-ablation's scale, so its tuned runs join the recipe
    # grid (`repbench ablate --grid quick-ablation --tuned DIR`): Fashion-MNIST, 100 train images per class (80 fit
    # / 20 validation) and 100 test images per class, 6 epochs at batch 64 for the paper's point, 4 trials per
    # method, the best re-run with 3 fresh seeds. About 20 minutes of one CPU thread.
    "quick-search": SearchSuite("quick-search", SCALES["quick"], trials=4),
})


class TrialFailed(Exception):
    """The trial ran but produced no usable model (diverged, collapsed, non-finite, raised)."""


def carve_validation(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A copy of ``ds`` whose train is a stratified (1 - fraction) of its train and whose test is the rest.

    The real test split is not in the result, so nothing downstream of the objective can read it.
    """
    fit, val = stratified_split(ds.train_y, fraction, seed)
    text = ds.train_text
    return replace(ds, name=f"{ds.name}[train-fit]", train_x=ds.train_x[fit], train_y=ds.train_y[fit],
                   test_x=ds.train_x[val], test_y=ds.train_y[val],
                   train_text=[text[i] for i in fit] if text else None,
                   test_text=[text[i] for i in val] if text else None)


@torch.no_grad()
def validation_knn(method, split: Dataset, cfg: RunConfig) -> float:
    mean, std = split.mean_std()
    f_fit = extract(method.encoder, split.train_x, mean, std, cfg.device)
    f_val = extract(method.encoder, split.test_x, mean, std, cfg.device)
    if not (torch.isfinite(f_fit).all() and torch.isfinite(f_val).all()):
        raise TrialFailed("non-finite features")
    res = PROTOCOLS.get("knn")(Features(f_fit, split.train_y, split.num_classes, "train"),
                               Features(f_val, split.test_y, split.num_classes, "validation"),
                               seed=cfg.seed, device=cfg.device, variants=(("cosine", "weighted", (20,)),))
    if is_skipped(res[METRIC]):  # the validation split cannot hold the search's kNN (e.g. over the memory budget)
        raise TrialFailed(f"validation kNN skipped: {res[METRIC]['skipped']}")
    return float(res[METRIC]["top1"])


class Objective:
    """Train one configuration epoch by epoch, reporting validation kNN after each to the pruner."""

    def __init__(self, method: str, base: RunConfig, split: Dataset, run_dir: Path, sampler_seed: int = 0) -> None:
        self.name, self.base, self.split, self.run_dir = method, base, split, run_dir
        self.cls, self.sampler_seed = METHODS.get(method), sampler_seed

    def __call__(self, trial) -> float:
        if "sampler_seed" not in trial.user_attrs:  # a retried trial keeps the seed that drew its parameters
            trial.set_user_attr("sampler_seed", self.sampler_seed)
        cfg = to_config(self.base, suggest(trial, self.cls, self.base, len(self.split.train_y)))
        trial.set_user_attr("config", jsonable(cfg.to_dict()))
        validate(cfg)
        method = build_method(cfg, self.split)
        trainer = Trainer(method, self.split, cfg, self.run_dir, progress=False)
        method.train()
        history: list[dict[str, Any]] = []
        for epoch in range(cfg.epochs):
            score, reason, detail = self.epoch(trainer, cfg, epoch)
            if reason:
                self.fail(trial, reason, detail, history)
            entry = trainer.state.history[-1] if trainer.state.history else {}
            history.append({"epoch": epoch + 1, "val_knn": score, "loss": entry.get("loss"),
                            "embed_std_ratio": entry.get("embed_std_ratio")})
            trial.set_user_attr("history", history)
            trial.report(score, epoch + 1)
            if epoch + 1 < cfg.epochs and trial.should_prune():  # a finished trial is complete, not pruned
                raise optuna.TrialPruned(f"validation kNN {score:.4f} after epoch {epoch + 1}")
        return score

    def epoch(self, trainer: Trainer, cfg: RunConfig, epoch: int) -> tuple[float, str, dict]:
        """(validation score, failure reason or "", its detail) after one more epoch."""
        try:
            trainer.run_epoch(epoch)
            trainer.state.epoch += 1
            if trainer.state.status != "ok":
                return math.nan, trainer.state.status, trainer.state.status_detail
            return validation_knn(trainer.method, self.split, cfg), "", {}
        except TrialFailed as err:
            return math.nan, str(err), {"epoch": epoch + 1}
        except (RuntimeError, ValueError, FloatingPointError) as err:
            return math.nan, "error", {"epoch": epoch + 1, "error": f"{type(err).__name__}: {err}"[:300]}

    @staticmethod
    def fail(trial, reason: str, detail: dict, history: list) -> None:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("fail_detail", jsonable(detail))
        trial.set_user_attr("history", history)
        raise TrialFailed(f"{reason} {detail}")


@dataclass(frozen=True)
class Budget:
    """How one method's study is run: its total trials, this worker's share, and the study's name and settings."""

    trials: int
    worker_trials: int | None = None
    study_name: str | None = None
    pruner: str = "median"
    sampler_seed: int = 0


def check_trainable(method: str) -> None:
    if METHODS.get(method).trained_by != "sgd":
        raise UsageError(f"method {method!r} has no training hyperparameters to search; pick a trainable method")


def search_method(method: str, suite: SearchSuite, budget: Budget, storage, out: Path, split: Dataset,
                  device: str = "cpu", log: Callable[[str], None] = print):
    """Run this worker's share of the study's trials; returns the study (possibly already complete)."""
    check_trainable(method)
    base = suite.base(method, device)
    name = study_name(budget, method, suite)
    opened = open_study(storage, name, study_attrs(method, suite, split), budget.sampler_seed,
                        make_pruner(budget.pruner, base.epochs))
    study = opened.study
    if opened.created:  # only the creator, so two workers starting together cannot both enqueue it
        study.enqueue_trial(paper_defaults(METHODS.get(method), base, len(split.train_y)),
                            user_attrs={"paper_defaults": True}, skip_if_exists=True)
    done = len(counted(study))
    todo = max(0, budget.trials - done)
    if budget.worker_trials is not None:
        todo = min(todo, budget.worker_trials)
    log(f"[{method}] study {name}: {done}/{budget.trials} trials finished, this worker (sampler seed {opened.seed}) "
        f"runs up to {todo}")
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if running and isinstance(storage, JournalStorage):
        log(f"[{method}] {running} trial(s) RUNNING: other workers', or killed ones' (journal storage has no "
            "heartbeat to tell them apart in Optuna 5.0.0; they are not counted)")
    gate = BudgetCallback(budget.trials, storage, lambda line: log(f"[{method}] {line}"))
    if todo and gate.room(study):
        objective = Objective(method, base, split, Path(out) / "trials" / name, opened.seed)
        optimize(study, objective, todo, gate, method, log)
    return study


def optimize(study, objective: Objective, todo: int, budget: BudgetCallback, method: str, log: Callable[[str], None]) -> None:
    def report(study, trial) -> None:
        reason = trial.user_attrs.get("fail_reason", "")
        value = f"{100 * trial.value:.1f}" if trial.value is not None else "-"
        secs = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
        params = " ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        log(f"[{method}] trial {trial.number} {trial.state.name} val {METRIC} {value} {reason} ({secs:.1f} s) {params}")

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by `report`, once
    try:
        study.optimize(budget.guard(objective), n_trials=todo, catch=(TrialFailed, OverBudget), gc_after_trial=True,
                       callbacks=[budget, report])
    finally:
        optuna.logging.set_verbosity(level)


def final_configs(study, suite: SearchSuite, seeds: int, device: str = "cpu") -> list[RunConfig]:
    best = best_trial(study)
    if best is None or seeds == 0:
        return []
    base = replace(to_config(suite.base(study.user_attrs["method"], device), best.params), recipe_name="tuned")
    return [replace(base, seed=FRESH_SEED_BASE + i) for i in range(seeds)]


def study_name(budget: Budget, method: str, suite: SearchSuite) -> str:
    return budget.study_name or f"{method}-{suite.name}-n{budget.trials}"


def open_storage(method_names: list[str], suite: SearchSuite, budget: Budget, spec: StorageSpec, out: Path,
                 data_root: str | None, device: str) -> tuple[Any, Dataset, dict[str, Budget]]:
    """Check everything that can be checked, then open the storage: (storage, validation split, budget per method).

    Nothing is written before the device, the methods and every study to reuse are known to be right, so a
    mismatch on the last method leaves the first method's study untouched too.
    """
    resolve_device(device)  # an unavailable device would otherwise fail inside the objective, a trial spent
    spec.heartbeat.check()
    for m in method_names:
        check_trainable(m)
    s = suite.scale
    split = carve_validation(load_dataset(s.dataset, data_root, s.per_class, s.test_per_class), suite.val_fraction,
                             suite.seed)
    if spec.kind == "rdb" and spec.target == parse_storage(None, out).target:
        Path(out).mkdir(parents=True, exist_ok=True)  # the default database lives in <out>
    storage = spec.open()
    prefix = budget.study_name
    budgets = {m: replace(budget, study_name=prefix and (f"{prefix}-{m}" if len(method_names) > 1 else prefix))
               for m in method_names}
    for m, b in budgets.items():
        check_reuse(storage, study_name(b, m, suite), study_attrs(m, suite, split))
    return storage, split, budgets


def run_search(method_names: list[str], suite: SearchSuite, budget: Budget, spec: StorageSpec, out: Path, *,
               seeds: int = 3, data_root: str | None = None, device: str = "cpu",
               log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Search each method with the same budget, re-run each best configuration, write the reports."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    storage, split, budgets = open_storage(method_names, suite, budget, spec, out, data_root, device)
    rows = []
    t0 = time.perf_counter()
    for m in method_names:
        study = search_method(m, suite, budgets[m], storage, out, split, device, log)
        finals = final_configs(study, suite, seeds, device)
        records = run_many(finals, out, Options(data_root=data_root, reuse=True, keep_going=True), log=log)
        rows.append(study_report(study, suite, out, {r["config"]["seed"]: metric_of(r) for r in records.values()}))
    if len(method_names) > 1:
        write_summary(rows, suite, budget.trials, out,
                      f"repbench search --suite {suite.name} --trials {budget.trials} "
                      f"--methods {','.join(method_names)} --seeds {seeds}")
    log(f"searched {len(method_names)} method(s) in {time.perf_counter() - t0:.0f} s; reports under {out}")
    return rows
