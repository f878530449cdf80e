"""One released checkpoint, evaluated as a trained run is: frozen features once, the protocols on them, a record."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.device import resolve_device
from bench.data import DATASETS, load_dataset
from bench.evaluate import check_data, run_protocols
from bench.features import checkpoint_identity, extract
from bench.released.load import load_released
from bench.store import provenance
from protocols import PROTOCOLS
from protocols.base import Features

RECORD = "record.json"


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path
    format: str
    dataset: str
    backbone: str | None
    protocols: tuple[str, ...]
    image_size: int = 224
    data_root: str | None = None
    device: str = "cpu"
    per_class: int | None = None
    test_per_class: int | None = None
    seed: int = 0


def evaluate_checkpoint(req: EvalRequest) -> dict[str, Any]:
    """The record of ``req``; every check (names, device, file, keys, data, protocol limits) before the work."""
    DATASETS.get(req.dataset)
    for name in req.protocols:
        PROTOCOLS.get(name)
    resolve_device(req.device)
    t0 = time.perf_counter()
    ds = load_dataset(req.dataset, req.data_root, req.per_class, req.test_per_class)
    check_data(ds, req.protocols, req.device)
    loaded = load_released(req.checkpoint, req.format, req.backbone, ds.channels, req.image_size)
    encoder = loaded.encoder.to(req.device)
    # The adapter normalises with the release's own statistics, so extraction only scales to [0, 1].
    unit = ((0.0,) * ds.channels, (1.0,) * ds.channels)
    train = Features(extract(encoder, ds.train_x, *unit, req.device), ds.train_y, ds.num_classes, "train")
    test = Features(extract(encoder, ds.test_x, *unit, req.device), ds.test_y, ds.num_classes, "test")
    t1 = time.perf_counter()
    metrics = run_protocols(req.protocols, train, test, seed=req.seed, device=req.device)
    return {
        "run_id": run_id(loaded.format, loaded.arch, req.checkpoint), "status": "ok",
        "config": {"format": loaded.format, "format_detected": req.format == "auto", "backbone": loaded.arch,
                   "dataset": req.dataset, "image_size": req.image_size,
                   "protocols": list(req.protocols), "per_class": req.per_class, "test_per_class": req.test_per_class,
                   "seed": req.seed, "device": req.device},
        "checkpoint": {"path": str(req.checkpoint), "sha256": checkpoint_identity(req.checkpoint).removeprefix("sha256:"),
                       "tensors_loaded": loaded.loaded, "keys_ignored": len(loaded.ignored),
                       "keys_ignored_first": loaded.ignored[:10], "feature_dim": loaded.encoder.feature_dim},
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.train_y), "test": len(ds.test_y)},
        "metrics": metrics,
        "timing": {"features_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2)},
        "provenance": provenance(req.seed, req.device),
    }


def run_id(fmt: str, arch: str, checkpoint: Path) -> str:
    return f"{fmt}-{arch}-{checkpoint_identity(checkpoint).removeprefix('sha256:')[:12]}"


def record_path(out: Path, record: dict[str, Any]) -> Path:
    return Path(out) / "eval" / record["config"]["dataset"] / record["run_id"] / RECORD
