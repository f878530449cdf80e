"""One run, end to end: validate -> data -> method -> train -> features -> protocols -> record."""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

import methods
import protocols
from bench.config import UNIFIED_RECIPE, Recipe, RunConfig
from bench.data import DATASETS, Dataset, load_dataset
from bench.errors import UsageError
from bench.store import provenance, save_checkpoint, write_json
from bench.train import CHECKPOINT, Trainer, seed_everything
from methods.base import Context, make_config
from protocols.base import Features
from protocols.features import extract
from protocols.zero_shot import write_clip_benchmark

OPTIMIZERS = ("sgd", "lars", "adamw")


def validate(cfg: RunConfig) -> None:
    """Every check that needs no data, so bad input fails before anything is loaded or written."""
    cls = methods.METHODS.get(cfg.method)
    methods.BACKBONES.get(cfg.backbone)
    DATASETS.get(cfg.dataset)
    for p in cfg.protocols or ():
        protocols.PROTOCOLS.get(p)
    make_config(cls, cfg.method_args)
    if cfg.recipe.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.recipe.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if cfg.device not in ("cpu",) and not cfg.device.startswith("cuda"):
        raise UsageError(f"unknown device {cfg.device!r}; use cpu or cuda")


def recipe_diff(recipe: Recipe) -> dict[str, Any]:
    """What this run's engineering changes relative to the shared recipe: {field: [unified, this]}."""
    return {f.name: [getattr(UNIFIED_RECIPE, f.name), getattr(recipe, f.name)]
            for f in fields(Recipe) if getattr(UNIFIED_RECIPE, f.name) != getattr(recipe, f.name)}


def context(cfg: RunConfig, ds: Dataset) -> Context:
    steps = max(1, len(ds.train_y) // cfg.batch_size) * cfg.epochs
    return Context(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                   num_train=len(ds.train_y), backbone=cfg.backbone, backbone_args=dict(cfg.backbone_args),
                   total_steps=steps, train_text=ds.train_text, class_names=tuple(ds.classes))


def run_dir_for(cfg: RunConfig, out: Path) -> Path:
    return Path(out) / "runs" / cfg.suite / cfg.run_id()


def evaluate(method, ds: Dataset, cfg: RunConfig) -> dict[str, Any]:
    mean, std = ds.mean_std()
    feats = {}
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        f = extract(method.encoder, x, mean, std, cfg.device)
        feats[split] = Features(f, y, {"split": split, "layer": "encoder", "num_classes": ds.num_classes,
                                       "method": method, "dataset": ds, "device": cfg.device})
    metrics: dict[str, Any] = {}
    for name in cfg.protocols if cfg.protocols is not None else protocols.PROTOCOLS.names():
        metrics.update(protocols.PROTOCOLS.get(name)(feats["train"], feats["test"], seed=cfg.seed))
    test_images = (ds.test_x.float().div(255) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    method.eval()
    with torch.no_grad():
        metrics.update(method.extra_metrics(test_images.to(cfg.device)))
    return metrics


def run_one(cfg: RunConfig, out: Path, data_root: str | None = None, resume: bool = False,
            progress: bool = True, ds: Dataset | None = None) -> dict[str, Any]:
    validate(cfg)
    if ds is None:
        ds = load_dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class)
    if cfg.batch_size > len(ds.train_y):
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {len(ds.train_y)} training images; lower it")
    seed_everything(cfg.seed, cfg.deterministic)
    cls = methods.METHODS.get(cfg.method)
    method = cls(context(cfg, ds), make_config(cls, cfg.method_args)).to(cfg.device)
    run_dir = run_dir_for(cfg, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    training: dict[str, Any] = {"status": "ok", "status_detail": {}}
    throughput: dict[str, Any] = {}
    if cls.fits_without_sgd:
        method.fit(ds)
        # Same checkpoint shape as the loop's, so plots and feature caches can reload fitted methods too.
        save_checkpoint(run_dir / CHECKPOINT, {"model": method.state_dict(), "epoch": 0, "step": 0,
                                               "config_key": cfg.key()})
    elif cls.trainable:
        trainer = Trainer(method, ds, cfg, run_dir, progress)
        state = trainer.fit(resume=resume)
        training = {"status": state.status, "status_detail": state.status_detail, **trainer.summary()}
        throughput = trainer.meter.summary()
    train_s = time.perf_counter() - t0
    # A diverged run is never scored (its weights are the last finite step's, not a trained model); the record
    # keeps status and step, and tables show it as a flag without numbers.
    metrics = evaluate(method, ds, cfg) if training["status"] != "diverged" else {}
    record = {
        "run_id": cfg.run_id(), "status": training["status"], "config": cfg.to_dict(),
        # The method's resolved config (capped queue sizes, backbone-dependent defaults), not just the request.
        "method_config": asdict(getattr(method, "cfg", None) or make_config(cls, cfg.method_args)),
        "recipe_diff_from_unified": recipe_diff(cfg.recipe),
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.train_y), "test": len(ds.test_y)},
        "metrics": metrics, "training": training, "throughput": throughput,
        "timing": {"train_s": round(train_s, 2), "eval_s": round(time.perf_counter() - t0 - train_s, 2)},
        "provenance": provenance(cfg.seed, cfg.device),
    }
    write_json(run_dir / "record.json", record)
    # Zero-shot results also in CLIP_benchmark's file shape, to sit beside its published numbers.
    write_clip_benchmark(metrics, run_dir, cfg.dataset, f"{cfg.method}-{cfg.backbone}", pretrained=cfg.run_id())
    return record
