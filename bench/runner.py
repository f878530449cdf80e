"""Runs, end to end: validate -> data -> method -> train -> evaluate -> record, one config or many.

The one place a method is built from a RunConfig (``build_method``), and the one run-many loop (``run_many``:
each dataset subset loaded once, a progress line per run, optionally several runs at once in worker processes).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bench import ddp
from bench.config import NOT_IN_KEY, RunConfig, TrainOptions
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.data import DATASETS, Dataset, load_dataset
from bench.ddp_train import trainer_class
from bench.evaluate import check_before_training, check_protocol_args, evaluate, write_clip_benchmark
from bench.monitor import Monitor, wanted
from bench.store import provenance, read_json, remove_stale_temps, save_checkpoint, write_json
from bench.train import CHECKPOINT, seed_everything
from methods import METHODS
from methods.backbones import BACKBONES
from methods.base import Context, Method, make_config
from methods.spec import UNIFIED_RECIPE, Recipe
from protocols import PROTOCOLS

OPTIMIZERS = ("sgd", "lars", "adamw")
RECORD = "record.json"


def validate(cfg: RunConfig) -> None:
    """Every check that needs no data, so bad input fails before anything is loaded or written."""
    cls = METHODS.get(cfg.method)
    BACKBONES.get(cfg.backbone)
    DATASETS.get(cfg.dataset)
    for p in cfg.protocols or ():
        PROTOCOLS.get(p)
    make_config(cls, cfg.method_args)
    check_protocol_args(cfg.protocol_args)
    if cfg.recipe.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.recipe.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    resolve_device(cfg.device)


def recipe_diff(recipe: Recipe) -> dict[str, Any]:
    """What this run's engineering changes relative to the shared recipe: {field: [unified, this]}."""
    unified, this = asdict(UNIFIED_RECIPE), asdict(recipe)
    return {f.name: [unified[f.name], this[f.name]] for f in fields(Recipe) if unified[f.name] != this[f.name]}


def context(cfg: RunConfig, ds: Dataset) -> Context:
    """What the config's method learns about the data and backbone when it is built; ``num_train`` counts the images
    it pre-trains on (STL-10's unlabeled ones too, unless it reads labels), as the Trainer draws them."""
    unlabeled = 0 if ds.unlabeled_x is None or METHODS.get(cfg.method).uses_labels else len(ds.unlabeled_x)
    num_train = len(ds.train_y) + unlabeled
    steps = max(1, num_train // cfg.batch_size) * cfg.epochs
    return Context(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                   num_train=num_train, backbone=cfg.backbone, backbone_args=dict(cfg.backbone_args),
                   total_steps=steps, train_text=ds.train_text, class_names=tuple(ds.classes))


def build_method(cfg: RunConfig, ds: Dataset) -> Method:
    """The config's method for this data, freshly seeded, on the config's device."""
    seed_everything(cfg.seed, cfg.deterministic)
    cls = METHODS.get(cfg.method)
    return cls(context(cfg, ds), make_config(cls, cfg.method_args)).to(cfg.device)


def run_dir_for(cfg: RunConfig, out: Path) -> Path:
    """``<out>/runs/<suite>/<run-id>``; a folder written under the config's legacy key is found under that name."""
    suite = Path(out) / "runs" / cfg.suite
    current, legacy = (suite / cfg.run_id(key) for key in cfg.accepted_keys())
    return legacy if legacy.is_dir() and not current.is_dir() else current


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a finished run's record.json holds; one clear line for a missing folder, record or config."""
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; pass --run results/runs/<suite>/<run-id>")
    record_path = run_dir / RECORD
    if not record_path.is_file():
        raise UsageError(f"{run_dir} has no {RECORD}; pass a run directory (results/runs/<suite>/<run-id>)")
    record = read_json(record_path)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UsageError(f"{record_path} has no run config; is it a repbench record.json?")
    cfg = RunConfig.from_dict(record["config"], str(record_path))
    METHODS.get(cfg.method)  # an unknown method is a UsageError naming it
    return cfg


def run_one(cfg: RunConfig, out: Path, data_root: str | None = None, resume: bool = False,
            progress: bool = True, ds: Dataset | None = None, train_opts: TrainOptions | None = None) -> dict[str, Any]:
    validate(cfg)
    ds = ds or load_dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class, cfg.image_size)
    if cfg.batch_size > len(ds.train_y):
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {len(ds.train_y)} training images; lower it "
                         "(--batch-size, or --set batch_size=N with a preset or table)")
    check_before_training(cfg, ds)
    method = build_method(cfg, ds)
    run_dir = run_dir_for(cfg, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)  # what a kill during an earlier run's writes left
    t0 = time.perf_counter()
    training, throughput, monitored = train(method, ds, cfg, run_dir, resume, progress, train_opts)
    train_s = time.perf_counter() - t0
    # A diverged run is never scored (its weights are the last finite step's, not a trained model); the record
    # keeps status and step, and tables show it as a flag without numbers.
    metrics = {**evaluate(method, ds, cfg), **monitored} if training["status"] != "diverged" else {}
    if not ddp.is_main():  # under torchrun every rank extracts its share of the features; rank 0 scores and writes
        return {"run_id": cfg.run_id(), "status": training["status"]}
    record = {
        "run_id": cfg.run_id(), "status": training["status"], "config": cfg.to_dict(),
        # The method's resolved config (capped queue sizes, backbone-dependent defaults), not just the request.
        "method_config": asdict(method.cfg), "recipe_diff_from_unified": recipe_diff(cfg.recipe),
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.train_y), "test": len(ds.test_y),
                 "unlabeled": 0 if ds.unlabeled_x is None else len(ds.unlabeled_x), "image_size": ds.image_size},
        "metrics": metrics, "training": training, "throughput": throughput,
        "timing": {"train_s": round(train_s, 2), "eval_s": round(time.perf_counter() - t0 - train_s, 2)},
        "provenance": provenance(cfg.seed, cfg.device),
    }
    write_json(run_dir / RECORD, record)
    write_clip_benchmark(metrics, run_dir, cfg.dataset, f"{cfg.method}-{cfg.backbone}", pretrained=cfg.run_id())
    return record


def train(method: Method, ds: Dataset, cfg: RunConfig, run_dir: Path, resume: bool, progress: bool,
          train_opts: TrainOptions | None = None
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train (or fit) as the method declares; returns the record's training and throughput entries and the
    monitors' metrics (bench/monitor.py; a method without SGD epochs gets its kNN once, on the final model)."""
    if method.trained_by == "fit":
        method.fit(ds.train_x, *ds.mean_std())
        # Same checkpoint shape as the loop's, so plots and feature caches can reload fitted methods too.
        save_checkpoint(run_dir / CHECKPOINT, {"model": method.state_dict(), "epoch": 0, "step": 0,
                                               "config_key": cfg.key()})
    if method.trained_by != "sgd":
        monitored = Monitor(method, ds, cfg, 1, 1).fitted_metrics() if wanted(cfg) else {}
        return {"status": "ok", "status_detail": {}}, {}, monitored
    trainer = trainer_class()(method, ds, cfg, run_dir, progress, train_opts)  # a torchrun rank's, or the plain loop
    state = trainer.fit(resume=resume)
    monitored = trainer.monitor.metrics() if trainer.monitor else {}
    return ({"status": state.status, "status_detail": state.status_detail, **trainer.summary()}, trainer.meter.summary(),
            monitored)


@dataclass(frozen=True)
class Options:
    """How ``run_many`` runs: ``reuse`` reads back a record already written for the same config and protocols;
    ``keep_going`` records a run that raises (status ``error``, not written, so a fixed bug reruns it) instead of
    stopping; bad input (UsageError) always stops everything."""

    data_root: str | None = None
    resume: bool = False
    progress: bool = False
    reuse: bool = False
    keep_going: bool = False
    train: TrainOptions = TrainOptions()  # compile, log sinks, log interval, progress lines (bench/config.py)


def run_many(configs: list[RunConfig], out: Path, opts: Options = Options(), jobs: int = 1,
             log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run (or read back) every config; returns {run_id: record} in the order of ``configs``.

    ``jobs`` > 1 runs that many configs at once in worker processes (spawned, so each has its own torch threads:
    set OMP_NUM_THREADS, e.g. 1 thread x 2 jobs on 2 cores). Runs are independent and each writes only its own
    run folder, so the records are the same as with one job.
    """
    for c in configs:
        validate(c)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    records: dict[str, dict[str, Any]] = {}

    def done(i: int, c: RunConfig, rec: dict[str, Any], secs: float) -> None:
        records[c.run_id()] = rec
        log(f"[{i}/{len(configs)}] {c.run_id()} {rec.get('status')} {summary_line(rec.get('metrics', {}))} ({secs:.1f} s)")

    if jobs <= 1:
        cache: dict[tuple, Dataset] = {}
        for i, c in enumerate(configs, 1):
            done(i, c, *_run_in_worker(c, out, opts, cache))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_in_worker, c, out, opts): c for c in configs}
            for i, f in enumerate(as_completed(futures), 1):
                done(i, futures[f], *f.result())
    return {c.run_id(): records[c.run_id()] for c in configs}


def summary_line(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k} {100 * v['top1']:.1f}" for k, v in metrics.items()
                    if k in ("knn", "linear") and isinstance(v.get("top1"), float))


def measured_alike(recorded: dict[str, Any], cfg: RunConfig) -> bool:
    """A record of the same trained config holds the metrics ``cfg`` asks for: same protocols, settings, monitors."""
    want = cfg.to_dict()
    want["protocols"] = list(cfg.protocols) if cfg.protocols is not None else None
    defaults = {"protocol_args": {}, "knn_every": 0, "online_linear": False}
    return all(json_like(recorded.get(k, defaults.get(k))) == json_like(want[k]) for k in NOT_IN_KEY if k != "suite")


def json_like(value: Any) -> Any:
    """``value`` as a record.json gives it back (tuples as lists)."""
    return json.loads(json.dumps(value))


_WORKER_DATA: dict[tuple, Dataset] = {}  # a spawned worker's datasets, kept across the configs it is given


def _run_in_worker(cfg: RunConfig, out: Path, opts: Options, cache: dict | None = None) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    cache = _WORKER_DATA if cache is None else cache
    key = (cfg.dataset, cfg.per_class, cfg.test_per_class, opts.data_root, cfg.image_size)
    if key not in cache:  # the config's dataset subset, one kept at a time
        cache.clear()
        cache[key] = load_dataset(cfg.dataset, opts.data_root, cfg.per_class, cfg.test_per_class, cfg.image_size)
    path = run_dir_for(cfg, out) / RECORD
    if opts.reuse and path.exists():
        rec = read_json(path)
        if measured_alike(rec.get("config", {}), cfg):
            return rec, time.perf_counter() - t
    try:
        rec = run_one(cfg, out, opts.data_root, opts.resume, opts.progress, cache[key], opts.train)
    except UsageError:
        raise
    except (RuntimeError, ValueError, FloatingPointError) as err:
        if not opts.keep_going:
            raise
        rec = {"run_id": cfg.run_id(), "status": "error", "error": f"{type(err).__name__}: {err}",
               "config": cfg.to_dict(), "metrics": {}}
    return rec, time.perf_counter() - t
