"""`repbench throughput --table`: method x backbone preset x input size, eager and compiled, with FLOPs and MFU.

Each row: images/s, step ms (data + compute), data-wait share, peak memory, FLOPs of one training step
(bench/flops.py), achieved TFLOP/s and MFU against the bf16 matmul peak measured in the same run (and against the
datasheet peak for cards bench/flops.py knows). Rows run one after another on a fresh model; a row that fails on the
card (out of memory, a method that cannot take the preset) is kept with its error, so one row never loses the table.
"""

from __future__ import annotations

import math
import re
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig
from bench.core.device import native_bf16
from bench.data import Dataset, class_subset, load_dataset, resized
from bench.flops import datasheet_tflops, matmul_peak_tflops, step_flops
from bench.store import atomic_write_bytes, device_name, provenance, write_json
from bench.throughput import build, measure
from methods import METHODS


@dataclass(frozen=True)
class Preset:
    backbone: str
    image_size: int
    backbone_args: tuple[tuple[str, Any], ...] = ()


PRESETS: dict[str, Preset] = {
    "convnet-28": Preset("convnet", 28),
    "resnet18-cifar-32": Preset("resnet18", 32, (("small_stem", True),)),
    "resnet50-224": Preset("resnet50", 224, (("small_stem", False),)),
    # DeiT's sizes: ViT-S/16 is 384 wide, 12 deep, 6 heads; ViT-Ti 192 x 12 x 3, here with 4 px patches (8x8 grid).
    "vit-s16-224": Preset("vit", 224, (("dim", 384), ("depth", 12), ("heads", 6), ("patch_size", 16))),
    "vit-tiny-32": Preset("vit", 32, (("dim", 192), ("depth", 12), ("heads", 3), ("patch_size", 4))),
}


@dataclass(frozen=True)
class Settings:
    dataset: str
    data_root: str | None
    device: str
    batch_size: int
    steps: int
    warmup: int
    compile: bool
    matmul_size: int


def table_methods(names: list[str] | None) -> list[str]:
    """The SGD-trained methods asked for (default: every registered one)."""
    return names or [m for m in METHODS.names() if METHODS.get(m).trained_by == "sgd"]


def fits(method: str, preset: Preset) -> bool:
    required = METHODS.get(method).required_backbone
    return required is None or required == preset.backbone


def preset_data(s: Settings, image_size: int) -> Dataset:
    """Enough training images for two batches, resized after subsetting (a 60k-image set at 224 px is 3 GB)."""
    ds = load_dataset(s.dataset, s.data_root)
    per_class = math.ceil(2 * s.batch_size / ds.num_classes) + 1
    ds = ds.subset("train", class_subset(ds.train_y, per_class)).subset("test", class_subset(ds.test_y, 1))
    return ds if ds.image_size == image_size else resized(ds, image_size)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak so far, not the row's


def measure_row(cfg: RunConfig, ds: Dataset, s: Settings, compiled: bool) -> dict[str, Any]:
    device = torch.device(s.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(cfg, ds, tmp)
        batches = trainer.source.batches(torch.arange(len(trainer.source)), cfg.batch_size, 1)
        first = trainer.batch(*next(batches))
        flops = step_flops(lambda: trainer.step(first))  # eager, and the first step's allocations happen here
        compile_s = None
        if compiled:
            trainer.method.training_step = torch.compile(trainer.method.training_step)
            t0 = time.perf_counter()
            trainer.step(first)
            trainer.sync()
            compile_s = round(time.perf_counter() - t0, 2)
        result = measure(trainer, s.steps, s.warmup)
    return {"mode": "compiled" if compiled else "eager", "images_per_s": round(result.images_per_s, 1),
            "step_ms": round(1000 * cfg.batch_size / result.images_per_s, 3),
            "data_wait_share": round(result.data_wait_share, 4), "peak_mem_mb": round(peak_memory_mb(device), 1),
            "gflop_per_step": round(flops / 1e9, 3), "tflops": flops * result.images_per_s / cfg.batch_size / 1e12,
            "compile_s": compile_s}


def run_table(methods: list[str], presets: list[str], s: Settings, log=print,
              save: Callable[[dict[str, Any]], object] = lambda table: None) -> dict[str, Any]:
    """Every method x preset row; ``save`` gets the table after each row, so a budget cut keeps the rows done."""
    device = torch.device(s.device)
    card = device_name(s.device)
    # The precision the steps run in: bf16 autocast where bf16 is native, else float32 (bench/train.py), so a CPU
    # without bf16 units is not measured against an emulated bf16 peak.
    dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    peak = matmul_peak_tflops(device, s.matmul_size, dtype=dtype)
    sheet = datasheet_tflops(card)
    table = {"card": card, "peak": {"measured_tflops": significant(peak), "dtype": str(dtype).removeprefix("torch."),
                                    "matmul_size": s.matmul_size, "datasheet_bf16_tflops": sheet},
             "settings": {k: v for k, v in vars(s).items() if k != "data_root"}, "rows": [],
             "provenance": provenance(0, s.device)}
    for name in presets:
        preset = PRESETS[name]
        ds = preset_data(s, preset.image_size)
        for method in [m for m in methods if fits(m, preset)]:
            cfg = RunConfig(method=method, dataset=s.dataset, backbone=preset.backbone, batch_size=s.batch_size,
                            device=s.device, protocols=(), suite="throughput", backbone_args=dict(preset.backbone_args))
            for compiled in (False, True) if s.compile else (False,):
                row = {"method": method, "preset": name, "backbone": preset.backbone, "image_size": preset.image_size,
                       "batch_size": s.batch_size, **one_row(cfg, ds, s, compiled)}
                if "tflops" in row:
                    row["mfu"] = significant(row["tflops"] / peak)
                    row["mfu_datasheet"] = significant(row["tflops"] / sheet) if sheet else None
                    row["tflops"] = significant(row["tflops"])
                table["rows"].append(row)
                log(row_line(row))
                save(table)
    return table


def significant(x: float) -> float:
    """Four significant digits: a CPU's 0.004 TFLOP/s and an H200's 400 both keep their precision."""
    return float(f"{x:.4g}")


def one_row(cfg: RunConfig, ds: Dataset, s: Settings, compiled: bool) -> dict[str, Any]:
    try:
        return measure_row(cfg, ds, s, compiled)
    except (RuntimeError, torch.OutOfMemoryError) as err:  # the card's limit or the compiler's, recorded not fatal
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return {"mode": "compiled" if compiled else "eager", "error": f"{type(err).__name__}: {first[:200]}"}


def row_line(row: dict[str, Any]) -> str:
    head = f"{row['method']} {row['preset']} {row['mode']}:"
    if "error" in row:
        return f"{head} {row['error']}"
    return (f"{head} {row['images_per_s']:.0f} img/s, {row['step_ms']:.1f} ms/step, data wait "
            f"{100 * row['data_wait_share']:.1f}%, {row['tflops']:.3f} TFLOP/s, MFU {100 * row['mfu']:.1f}%")


def card_slug(card: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") or "unknown"


def markdown(table: dict[str, Any]) -> str:
    peak, p = table["peak"], table["provenance"]
    sheet = f"{peak['datasheet_bf16_tflops']} TFLOP/s" if peak["datasheet_bf16_tflops"] else "unknown for this card"
    lines = [f"# Training throughput on {table['card']}", "",
             f"{peak['dtype']} matmul peak measured in this run: {peak['measured_tflops']} TFLOP/s "
             f"({peak['matmul_size']}^3); datasheet dense bf16: {sheet}. "
             f"Code {p['git_sha']}{' (dirty)' if p['git_dirty'] else ''}, torch {p['torch']}, {p['time']}.",
             "FLOPs: one training step (forward + backward, all views) by torch's FlopCounterMode; MFU = achieved / "
             "measured peak. Peak memory on a CPU is the process's peak RSS so far.", "",
             "| method | backbone | px | mode | img/s | step ms | data wait | peak MiB | GFLOP/step | TFLOP/s | MFU | "
             "MFU (datasheet) | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['preset']} | {r['image_size']} | {r['mode']} | {r['error']} |"
                         + " |" * 8)
            continue
        ds = f"{100 * r['mfu_datasheet']:.1f}%" if r["mfu_datasheet"] is not None else ""
        lines.append(f"| {r['method']} | {r['preset']} | {r['image_size']} | {r['mode']} | {r['images_per_s']:.0f} | "
                     f"{r['step_ms']:.2f} | {100 * r['data_wait_share']:.1f}% | {r['peak_mem_mb']:.0f} | "
                     f"{r['gflop_per_step']:.2f} | {r['tflops']:.3f} | {100 * r['mfu']:.1f}% | {ds} | "
                     f"{'' if r['compile_s'] is None else r['compile_s']} |")
    return "\n".join(lines) + "\n"


def write_table(table: dict[str, Any], out: Path) -> tuple[Path, Path]:
    stem = out / card_slug(table["card"])
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    write_json(js, table)
    atomic_write_bytes(md, markdown(table).encode())
    return md, js

