"""One released checkpoint, evaluated as a trained run is: frozen features once, the protocols on them, a record.

CLIP files also get zero-shot: the text tower embeds each class's prompts (bench/released/clip.py chooses the
names and templates) and the record holds CLIP_benchmark's result beside the harness's entries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.core.device import resolve_device
from bench.data import DATASETS, Dataset, load_dataset
from bench.evaluate import DEFAULT_TEMPLATES, check_data, clip_benchmark_record, run_protocols, text_side
from bench.features import checkpoint_identity, extract
from bench.released.clip import prompts
from bench.released.load import Loaded, load_released
from bench.store import provenance
from protocols import PROTOCOLS
from protocols.base import Features, TextSide

RECORD = "record.json"


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path
    format: str
    dataset: str
    backbone: str | None
    protocols: tuple[str, ...]
    image_size: int | None = None  # None: the release's own (224 for ResNets and ViTs)
    data_root: str | None = None
    device: str = "cpu"
    per_class: int | None = None
    test_per_class: int | None = None
    seed: int = 0
    arch: str | None = None  # CLIP: an open_clip model name
    add_zero_shot: bool = False  # --protocols left at its default: zero-shot joins them when the file has a text tower


def evaluate_checkpoint(req: EvalRequest) -> dict[str, Any]:
    """The record of ``req``; every check (names, device, file, keys, data, protocol limits) before the work."""
    DATASETS.get(req.dataset)
    for name in req.protocols:
        PROTOCOLS.get(name)
    resolve_device(req.device)
    t0 = time.perf_counter()
    ds = load_dataset(req.dataset, req.data_root, req.per_class, req.test_per_class)
    check_data(ds, req.protocols, req.device)
    loaded = load_released(req.checkpoint, req.format, req.backbone, ds.channels, req.image_size, req.arch)
    with_text = req.add_zero_shot and loaded.text is not None and "zero-shot" not in req.protocols
    protocols = (*req.protocols, "zero-shot") if with_text else req.protocols
    encoder = loaded.encoder.to(req.device)
    # The adapter normalises with the release's own statistics, so extraction only scales to [0, 1].
    unit = ((0.0,) * ds.channels, (1.0,) * ds.channels)
    train = Features(extract(encoder, ds.train_x, *unit, req.device), ds.train_y, ds.num_classes, "train")
    test_x = extract(encoder, ds.test_x, *unit, req.device)
    text, prompted = _text(loaded, ds, req.dataset, test_x, req.device) if "zero-shot" in protocols else (None, {})
    test = Features(test_x, ds.test_y, ds.num_classes, "test", text)
    t1 = time.perf_counter()
    metrics = run_protocols(protocols, train, test, seed=req.seed, device=req.device)
    record = {
        "run_id": run_id(loaded.format, loaded.arch, req.checkpoint), "status": "ok",
        "config": {"format": loaded.format, "format_detected": req.format == "auto", "backbone": loaded.arch,
                   "dataset": req.dataset, "image_size": loaded.image_size,
                   "protocols": list(protocols), "per_class": req.per_class, "test_per_class": req.test_per_class,
                   "seed": req.seed, "device": req.device},
        "checkpoint": {"path": str(req.checkpoint), "sha256": checkpoint_identity(req.checkpoint).removeprefix("sha256:"),
                       "tensors_loaded": loaded.loaded, "keys_ignored": len(loaded.ignored),
                       "keys_ignored_first": loaded.ignored[:10], "feature_dim": loaded.encoder.feature_dim},
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.train_y), "test": len(ds.test_y)},
        "metrics": metrics,
        "timing": {"features_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2)},
        "provenance": provenance(req.seed, req.device),
    }
    if loaded.clip is not None:
        record["clip"] = {**loaded.clip, **prompted}
    if "zero-shot" in metrics and "error" not in metrics["zero-shot"]:
        record["clip_benchmark"] = clip_benchmark(record)
    return record


def _text(loaded: Loaded, ds: Dataset, dataset: str, test_x: torch.Tensor, device: str) -> tuple[TextSide | None, dict]:
    """The text side zero-shot scores (None without a text tower), prompted with the names and templates
    ``prompts`` chooses, and what the record says of them."""
    if loaded.text is None:
        return None, {}
    names, templates, names_from = prompts(dataset, ds.classes)
    prompted = replace(ds, classes=names, extras=ds.extras if templates is None else {**ds.extras, "templates": templates})
    said = {"class_names": names_from, "templates": len(prompted.extras.get("templates") or DEFAULT_TEMPLATES)}
    return text_side(loaded.text, prompted, test_x, device), said


def clip_benchmark(record: dict[str, Any]) -> dict[str, Any]:
    """The zero-shot result in CLIP_benchmark's file shape; ``pretrained`` is the checkpoint's file name."""
    cfg = record["config"]
    return clip_benchmark_record(record["metrics"], cfg["dataset"], cfg["backbone"], "zeroshot_classification",
                                 Path(record["checkpoint"]["path"]).name)


def run_id(fmt: str, arch: str, checkpoint: Path) -> str:
    return f"{fmt}-{arch}-{checkpoint_identity(checkpoint).removeprefix('sha256:')[:12]}"


def record_path(out: Path, record: dict[str, Any]) -> Path:
    return Path(out) / "eval" / record["config"]["dataset"] / record["run_id"] / RECORD
