"""Hyperparameter search with Optuna: one study per (method, search suite, trial budget).

``repbench search --method M --suite S --trials N [--storage URL] [--study NAME] [--out DIR]`` and
``repbench search --methods all --trials N``.

- Space: bench/spaces.py (shared knobs + the method's own), with the paper's point enqueued as trial 0.
- Sampler: TPESampler seeded, with ``multivariate=True`` and ``constant_liar=True`` set explicitly (Optuna 5
  changed both defaults; the version is pinned in pyproject.toml). Pruner: median (default) or Hyperband,
  fed the validation score after every epoch.
- Objective: weighted k-NN top-1 (k=20) on a stratified validation split carved from the TRAINING subset;
  the method trains on the rest. The test split is dropped from the data the objective sees.
- A trial whose loss turns NaN/inf (``diverged``), whose embeddings collapse, whose features are not
  finite, or whose training raises, FAILS with the reason in ``trial.user_attrs["fail_reason"]``.
- Storage: ``sqlite:///<out>/optuna.db`` by default; any SQLAlchemy URL, or a journal file (a path ending
  ``.log`` / ``.journal``, JournalStorage + JournalFileBackend, the safe choice for several processes on one
  machine). ``--trials N`` is the study's total over every worker (MaxTrialsCallback counting COMPLETE,
  PRUNED and FAIL); rerunning the same command continues the study.
- After the search, the best configuration is re-run with fresh seeds on the full training subset and
  scored on the test split (recipe name ``tuned``); ``repbench ablate --grid recipe --tuned <out>/runs``
  puts these beside the paper and unified recipes.

Open a study in the dashboard: ``pip install optuna-dashboard; optuna-dashboard sqlite:///results/search/optuna.db``
(for a journal file: ``optuna-dashboard path/to/study.log``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import methods
from bench.ablate import METRIC, QUICK_METHODS, SCALES, Scale, metric_of, run_configs
from bench.config import RunConfig
from bench.data import Dataset
from bench.errors import UsageError
from bench.registry import Registry
from bench.spaces import method_knobs, missing_knobs, paper_defaults, suggest, to_config

FRESH_SEED_BASE = 1000  # final re-runs use seeds 1000, 1001, ...: never the search's seed 0
JOURNAL_SUFFIXES = (".log", ".journal")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class SearchSuite:
    name: str
    scale: Scale
    trials: int  # default budget (the study's total)
    methods: tuple[str, ...] = ()  # searched when neither --method nor --methods is given
    val_fraction: float = 0.2
    seed: int = 0  # training seed of every trial: trials differ only by their hyperparameters

    def base(self, method: str, device: str = "cpu") -> RunConfig:
        """The method's paper recipe at this scale: the space is centred on it."""
        cls = methods.METHODS.get(method)
        s = self.scale
        backbone = getattr(cls, "required_backbone", s.backbone)  # e.g. MAE exists only on a ViT
        return RunConfig(method=method, dataset=s.dataset, backbone=backbone, epochs=s.epochs, batch_size=s.batch_size,
                         seed=self.seed, device=device, recipe=cls.paper_recipe, recipe_name="paper",
                         per_class=s.per_class, test_per_class=s.test_per_class, protocols=(METRIC,),
                         suite=f"search-{self.name}")


SEARCH_SUITES: Registry[SearchSuite] = Registry("search suite")
SEARCH_SUITES.register("smoke")(SearchSuite("smoke", SCALES["smoke"], trials=3, methods=("simclr", "supervised")))
# quick-search (`repbench search --suite quick-search`): the quick-ablation methods (SimCLR, MoCo v1/v2, BYOL,
# DINO, supervised) on Fashion-MNIST, 100 train images per class (80 fit / 20 validation) and 100 test images
# per class, 6 epochs at batch 64 for the paper's point, 4 trials per method, the best re-run with 3 fresh
# seeds. Budget: about 20 minutes of CPU time with one thread (under 30 minutes on 2 free cores). The scale is
# quick-ablation's, so its tuned runs join the recipe grid (`repbench ablate --grid quick-ablation --tuned DIR`).
SEARCH_SUITES.register("quick-search")(SearchSuite("quick-search", SCALES["quick"], trials=4, methods=QUICK_METHODS))


class TrialFailed(Exception):
    """The trial ran but produced no usable model (diverged, collapsed, non-finite, raised)."""


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # rdb | journal
    target: str  # SQLAlchemy URL or journal path

    def open(self):
        import optuna
        import sqlalchemy.exc

        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            try:
                return JournalStorage(JournalFileBackend(self.target))
            except OSError as err:
                raise UsageError(f"cannot open journal storage {self.target}: {err}") from None
        try:
            return optuna.storages.RDBStorage(self.target)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0][:200]
            raise UsageError(f"cannot reach storage {self.target!r}: {reason}; check the URL, server and driver") from None


def _writable_dir(d: Path, what: str) -> None:
    if not d.is_dir():
        raise UsageError(f"{what}: folder {d} does not exist; create it or pick another path")
    import os

    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: folder {d} is not writable; pick another path")


def parse_storage(url: str | None, out: Path) -> StorageSpec:
    """Check a --storage value without writing anything; UsageError (one line) when malformed."""
    if url is None:
        return StorageSpec("rdb", f"sqlite:///{(Path(out) / 'optuna.db').resolve()}")
    if "://" not in url:
        if url.endswith(JOURNAL_SUFFIXES):
            path = Path(url).expanduser().resolve()
            _writable_dir(path.parent, f"--storage {url}")
            if path.exists() and not path.is_file():
                raise UsageError(f"--storage {url} is not a file; give a journal file path ending .log or .journal")
            return StorageSpec("journal", str(path))
        raise UsageError(f"--storage {url!r} is neither a SQLAlchemy URL (e.g. sqlite:///out/optuna.db, "
                         "postgresql://user@host/db) nor a journal file ending .log or .journal")
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError, ValueError) as err:
        raise UsageError(f"--storage {url!r} is not a usable SQLAlchemy URL ({str(err).splitlines()[0][:120]}); "
                         "e.g. sqlite:///out/optuna.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError(f"--storage {url!r} is an in-memory database; give a file, e.g. sqlite:///out/optuna.db")
        _writable_dir(Path(parsed.database).expanduser().resolve().parent, f"--storage {url}")
    return StorageSpec("rdb", url)


# --------------------------------------------------------------------------- the objective


def carve_validation(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A copy of ``ds`` whose train is a stratified (1 - fraction) of its train and whose test is the rest.

    The real test split is not in the result, so nothing downstream of the objective can read it.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ds.train_y))
    fit, val = train_test_split(idx, test_size=fraction, stratify=ds.train_y.numpy(), random_state=seed)
    fit, val = torch.from_numpy(np.sort(fit)), torch.from_numpy(np.sort(val))
    text = ds.train_text
    return replace(ds, name=f"{ds.name}[train-fit]", train_x=ds.train_x[fit], train_y=ds.train_y[fit],
                   test_x=ds.train_x[val], test_y=ds.train_y[val],
                   train_text=[text[i] for i in fit] if text else None,
                   test_text=[text[i] for i in val] if text else None)


@torch.no_grad()
def validation_knn(method, split: Dataset, cfg: RunConfig) -> float:
    import protocols
    from protocols.base import Features
    from protocols.features import extract

    mean, std = split.mean_std()
    f_fit = extract(method.encoder, split.train_x, mean, std, cfg.device)
    f_val = extract(method.encoder, split.test_x, mean, std, cfg.device)
    if not (torch.isfinite(f_fit).all() and torch.isfinite(f_val).all()):
        raise TrialFailed("non-finite features")
    meta = {"num_classes": split.num_classes, "device": cfg.device}
    res = protocols.PROTOCOLS.get("knn")(Features(f_fit, split.train_y, meta), Features(f_val, split.test_y, meta),
                                         seed=cfg.seed, variants=(("cosine", "weighted", (20,)),))
    return float(res[METRIC]["top1"])


class Objective:
    """Train one configuration epoch by epoch, reporting validation kNN after each to the pruner."""

    def __init__(self, method: str, base: RunConfig, split: Dataset, run_dir: Path) -> None:
        self.name, self.base, self.split, self.run_dir = method, base, split, run_dir
        self.cls = methods.METHODS.get(method)

    def __call__(self, trial) -> float:
        import optuna

        from bench.pipeline import context, validate
        from bench.store import _jsonable
        from bench.train import Trainer, seed_everything
        from methods.base import make_config

        params = suggest(trial, self.name, self.cls, self.base, len(self.split.train_y))
        cfg = to_config(self.base, params)
        trial.set_user_attr("config", _jsonable(cfg.to_dict()))
        validate(cfg)
        seed_everything(cfg.seed)
        method = self.cls(context(cfg, self.split), make_config(self.cls, cfg.method_args)).to(cfg.device)
        trainer = Trainer(method, self.split, cfg, self.run_dir, progress=False)
        method.train()
        history: list[dict[str, Any]] = []
        for epoch in range(cfg.epochs):
            score, reason, detail = math.nan, "", {}
            try:
                trainer.run_epoch(epoch)
                trainer.state.epoch += 1
                if trainer.state.status != "ok":
                    reason, detail = trainer.state.status, trainer.state.status_detail
                else:
                    score = validation_knn(method, self.split, cfg)
            except TrialFailed as err:
                reason, detail = str(err), {"epoch": epoch + 1}
            except (RuntimeError, ValueError, FloatingPointError) as err:
                reason, detail = "error", {"epoch": epoch + 1, "error": f"{type(err).__name__}: {err}"[:300]}
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

    @staticmethod
    def fail(trial, reason: str, detail: dict, history: list) -> None:
        from bench.store import _jsonable

        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("fail_detail", _jsonable(detail))
        trial.set_user_attr("history", history)
        raise TrialFailed(f"{reason} {detail}")


# --------------------------------------------------------------------------- running a study


def make_sampler(seed: int):
    import optuna

    # Optuna 5 changed the defaults of both flags; set them so a version bump cannot change the search.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        # Epoch 1 is too noisy to stop on: prune from epoch 2, against at least two earlier trials.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def finished_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def default_study_name(method: str, suite: SearchSuite, trials: int) -> str:
    return f"{method}-{suite.name}-n{trials}"


def study_attrs(method: str, suite: SearchSuite, trials: int, split: Dataset) -> dict[str, Any]:
    s = suite.scale
    return {"method": method, "suite": suite.name, "dataset": s.dataset, "per_class": s.per_class, "epochs": s.epochs,
            "backbone": s.backbone, "val_fraction": suite.val_fraction, "n_fit": len(split.train_y),
            "n_val": len(split.test_y), "chance": 1 / split.num_classes}


def open_study(storage, name: str, sampler_seed: int, pruner: str, epochs: int):
    import optuna

    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        existing = 0
    # A resumed study gets a sampler seed of its own, so its random start-up points are new ones.
    study = optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(sampler_seed + existing),
                                pruner=make_pruner(pruner, epochs), direction="maximize", load_if_exists=True)
    return study, existing


def search_method(method: str, suite: SearchSuite, trials: int, storage, out: Path, *,
                  study_name: str | None = None, pruner: str = "median", sampler_seed: int = 0,
                  worker_trials: int | None = None, data_root: str | None = None, device: str = "cpu",
                  log: Callable[[str], None] = print, ds: Dataset | None = None):
    """Run this worker's share of the study's ``trials``; returns the study (possibly already complete)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from bench.data import load_dataset

    cls = methods.METHODS.get(method)
    if not cls.trainable or cls.fits_without_sgd:
        raise UsageError(f"method {method!r} has no training hyperparameters to search; pick a trainable method")
    base = suite.base(method, device)
    if ds is None:
        ds = load_dataset(base.dataset, data_root, base.per_class, base.test_per_class)
    split = carve_validation(ds, suite.val_fraction, suite.seed)
    name = study_name or default_study_name(method, suite, trials)
    study, existing = open_study(storage, name, sampler_seed, pruner, base.epochs)
    attrs = study_attrs(method, suite, trials, split)
    for k, v in attrs.items():
        if k in study.user_attrs and study.user_attrs[k] != v:
            raise UsageError(f"study {name!r} was made with {k}={study.user_attrs[k]!r}, not {v!r}; "
                             "pick another --study name or storage")
        study.set_user_attr(k, v)
    if existing == 0:
        study.enqueue_trial(paper_defaults(method, cls, base, len(split.train_y)), user_attrs={"paper_defaults": True},
                            skip_if_exists=True)
    done = len(study.get_trials(deepcopy=False, states=finished_states()))
    todo = max(0, trials - done)
    if worker_trials is not None:
        todo = min(todo, worker_trials)
    for field in missing_knobs(method, cls):
        log(f"[{method}] note: {cls.__name__}.Config has no {field!r}; not searched")
    log(f"[{method}] study {name}: {done}/{trials} trials finished, this worker runs up to {todo}")
    if todo:

        def report(study, trial) -> None:
            reason = trial.user_attrs.get("fail_reason", "")
            value = f"{100 * trial.value:.1f}" if trial.value is not None else "-"
            secs = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
            log(f"[{method}] trial {trial.number} {trial.state.name} val {METRIC} {value} {reason} ({secs:.1f} s) "
                + " ".join(f"{k}={_short(v)}" for k, v in trial.params.items()))

        objective = Objective(method, base, split, Path(out) / "trials" / name)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by `report`, once
        try:
            study.optimize(objective, n_trials=todo, catch=(TrialFailed,), gc_after_trial=True,
                           callbacks=[MaxTrialsCallback(trials, states=finished_states()), report])
        finally:
            optuna.logging.set_verbosity(level)
    return study


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- reporting


def budget_values(study) -> list[float]:
    """One score per finished trial: COMPLETE its value, PRUNED its last reported value, FAIL chance level.

    Counting failures at chance keeps a method whose space is half unstable from looking as good as a
    robust one in the budget curve.
    """
    from optuna.trial import TrialState

    chance = study.user_attrs.get("chance", math.nan)
    out = []
    for t in study.get_trials(deepcopy=False, states=finished_states()):
        if t.state == TrialState.COMPLETE:
            out.append(t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            out.append(t.intermediate_values[max(t.intermediate_values)])
        elif t.state == TrialState.FAIL:
            out.append(chance)
    return out


def importances(study) -> dict[str, dict[str, float] | str]:
    """fANOVA and PED-ANOVA importances over COMPLETE trials, or why they could not be computed."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    out: dict[str, dict[str, float] | str] = {}
    for label, evaluator in (("fanova", FanovaImportanceEvaluator(seed=0)), ("ped-anova", PedAnovaImportanceEvaluator())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[label] = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
            out[label] = f"n/a ({str(err).splitlines()[0][:100]})"
    return out


def trials_frame(study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "paper_defaults": bool(t.user_attrs.get("paper_defaults", False)),
                     "fail_reason": t.user_attrs.get("fail_reason", ""), "seconds": secs,
                     **{f"param.{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def _importance_text(imp: dict[str, float] | str, top: int | None = None) -> str:
    if isinstance(imp, str):
        return imp
    ranked = sorted(imp.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v:.2f}" for k, v in ranked) or "-"


def paper_trial_value(study) -> float:
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("paper_defaults"):
            return t.value if t.value is not None else math.nan
    return math.nan


def best_trial(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def final_configs(study, suite: SearchSuite, seeds: int, device: str = "cpu") -> list[RunConfig]:
    best = best_trial(study)
    if best is None or seeds == 0:
        return []
    base = replace(to_config(suite.base(study.user_attrs["method"], device), best.params), recipe_name="tuned")
    return [replace(base, seed=FRESH_SEED_BASE + i) for i in range(seeds)]


def study_report(study, suite: SearchSuite, out: Path, tuned: list[float]) -> dict[str, Any]:
    """Write <out>/<study>/{trials.csv, report.md, budget.png}; return the summary row."""
    from bench.stats import budget_curve, interval, pct, plot_budget_curves, summarise
    from bench.store import atomic_write_bytes

    d = Path(out) / study.study_name
    df = trials_frame(study)
    atomic_write_bytes(d / "trials.csv", df.to_csv(index=False).encode())
    curve = budget_curve(budget_values(study))
    plot_budget_curves({study.user_attrs["method"]: curve}, d / "budget.png", f"{study.study_name}: expected best validation")
    imp = importances(study)
    best = best_trial(study)
    states = df["state"].value_counts().to_dict() if len(df) else {}
    t = summarise(tuned)
    row = {"method": study.user_attrs["method"], "study": study.study_name, "trials": len(df),
           **{s.lower(): int(states.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL")},
           "val_paper": paper_trial_value(study), "val_best": best.value if best else math.nan,
           "best_params": dict(best.params) if best else {}, "test_tuned_n": t["n"], "test_tuned_mean": t["mean"],
           "test_tuned_lo": t["ci_lo"], "test_tuned_hi": t["ci_hi"],
           "fanova": _importance_text(imp["fanova"]), "ped_anova": _importance_text(imp["ped-anova"]),
           "fanova_top3": _importance_text(imp["fanova"], 3), "ped_anova_top3": _importance_text(imp["ped-anova"], 3),
           "curve": curve}
    shown = df.drop(columns=["seconds"]).copy()
    shown["value"] = [pct(v) for v in shown["value"]]
    for c in shown.columns:
        if c.startswith("param."):
            shown[c] = [_short(v) for v in shown[c]]
    lines = [f"## Study `{study.study_name}`", "",
             f"Suite `{suite.name}`: {suite.scale.dataset}, validation split {suite.val_fraction:.0%} of the training "
             f"subset ({study.user_attrs.get('n_fit')} fit / {study.user_attrs.get('n_val')} validation), "
             f"{suite.scale.epochs} epoch(s). Objective: validation kNN top-1 (%); trial 0 is the paper's point.", "",
             f"- trials: {row['complete']} complete, {row['pruned']} pruned, {row['fail']} failed",
             f"- paper defaults: {pct(row['val_paper'])}; best: {pct(row['val_best'])} with "
             + ", ".join(f"{k}={_short(v)}" for k, v in row["best_params"].items()),
             f"- best re-run on the test split with {t['n']} fresh seeds: {pct(t['mean'])} {interval(t['ci_lo'], t['ci_hi'])}",
             f"- importance (fANOVA): {row['fanova']}", f"- importance (PED-ANOVA): {row['ped_anova']}",
             f"- knobs searched: lr, weight_decay, batch_size, "
             f"{', '.join(k.field for k in method_knobs(row['method'], methods.METHODS.get(row['method'])))}", "",
             shown.to_markdown(index=False), "", "![budget](budget.png)", ""]
    atomic_write_bytes(d / "report.md", "\n".join(lines).encode())
    return row


def summary_markdown(rows: list[dict[str, Any]], suite: SearchSuite, trials: int, command: str = "") -> str:
    from bench.stats import interval, pct

    table = pd.DataFrame([{
        "method": r["method"], "trials (ok/pruned/failed)": f"{r['complete']}/{r['pruned']}/{r['fail']}",
        "val paper %": pct(r["val_paper"]), "val best %": pct(r["val_best"]),
        "test tuned %": pct(r["test_tuned_mean"]), "95% bootstrap CI": interval(r["test_tuned_lo"], r["test_tuned_hi"]),
        "n": r["test_tuned_n"], "fANOVA (top 3)": r["fanova_top3"], "PED-ANOVA (top 3)": r["ped_anova_top3"]}
        for r in rows])
    s = suite.scale
    head = [f"## Search `{suite.name}`: {trials} trials per method", "",
            f"{s.dataset}, {s.per_class or 'all'} train images per class ({suite.val_fraction:.0%} held out for validation), "
            f"{s.epochs} epoch(s), {s.backbone}. Val: validation kNN top-1 of the paper's point (trial 0) and of the best "
            f"trial. Test tuned: the best configuration re-trained on the whole training subset with fresh seeds "
            f"({FRESH_SEED_BASE}, ...) and scored on the test split ({s.test_per_class or 'all'} per class): mean and 95% "
            "BCa bootstrap interval over seeds. Importances: fANOVA and PED-ANOVA over complete trials (noisy at "
            "this budget). Budget curves: expected best validation score after n trials (Dodge et al. 2019), drawing "
            "from this study's finished trials (a pruned trial counts at its last score, a failed one at chance); "
            "TPE's trials are not independent draws, so read the curves as indicative.", "",
            f"Command: `{command}`" if command else "", "", table.to_markdown(index=False), "",
            "![budget curves](budget_curves.png)", ""]
    return "\n".join(head)


def run_search(method_names: list[str], suite: SearchSuite, trials: int, spec: StorageSpec, out: Path, *,
               study_name: str | None = None, pruner: str = "median", sampler_seed: int = 0,
               worker_trials: int | None = None, seeds: int = 3, data_root: str | None = None, device: str = "cpu",
               log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Search each method with the same budget, re-run each best configuration, write the reports."""
    from bench.data import load_dataset
    from bench.stats import plot_budget_curves
    from bench.store import atomic_write_bytes

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if spec.kind == "rdb" and spec.target == parse_storage(None, out).target:
        Path(out).mkdir(parents=True, exist_ok=True)  # the default database lives in <out>
    storage = spec.open()
    s = suite.scale
    ds = load_dataset(s.dataset, data_root, s.per_class, s.test_per_class)
    rows = []
    t0 = time.perf_counter()
    for m in method_names:
        name = (f"{study_name}-{m}" if len(method_names) > 1 else study_name) if study_name else None
        study = search_method(m, suite, trials, storage, out, study_name=name, pruner=pruner, sampler_seed=sampler_seed,
                              worker_trials=worker_trials, data_root=data_root, device=device, log=log, ds=ds)
        finals = final_configs(study, suite, seeds, device)
        records = run_configs(finals, out, data_root, log) if finals else {}
        rows.append(study_report(study, suite, out, [metric_of(r) for r in records.values()]))
    if len(method_names) > 1:
        plot_budget_curves({r["method"]: r["curve"] for r in rows}, Path(out) / "budget_curves.png",
                           f"{suite.name}: expected best validation kNN vs trials")
        command = f"repbench search --suite {suite.name} --trials {trials} --methods {','.join(method_names)} --seeds {seeds}"
        atomic_write_bytes(Path(out) / "summary.md", summary_markdown(rows, suite, trials, command).encode())
        flat = pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in rows])
        atomic_write_bytes(Path(out) / "summary.csv", flat.to_csv(index=False).encode())
        curves = pd.concat([r["curve"].assign(method=r["method"]) for r in rows], ignore_index=True)
        atomic_write_bytes(Path(out) / "budget_curves.csv", curves.to_csv(index=False).encode())
    log(f"searched {len(method_names)} method(s) in {time.perf_counter() - t0:.0f} s; reports under {out}")
    return rows
