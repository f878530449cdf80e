"""Measure the prepared-store loader on a synthetic ImageFolder of ImageNet-sized JPEGs (results/loader/README.md).

    python scripts/bench_loader.py --root /tmp/repbench-loader [--classes 100 --train 200 --val 10] [--sizes 64,224]

1. Writes ROOT/tree/{train,val}/cNNN/*.JPEG: 500x375 colour gradients with grain (quality 90, ~90 KB each, near
   ImageNet's typical file), in worker processes. Skipped when the tree already holds the asked counts.
2. Times ``repbench data prepare imagefolder --size S`` (default workers) for each size, as a user runs it.
3. Times one epoch of training batches (batch 256, a seeded permutation) from each store through the streaming
   source (memory-mapped, background thread) and through the resident source (the same images in memory),
   into the CPU "device", with nothing consuming them: the loader's ceiling, not a training speed.
Prints one JSON object; the machine is in it. Nothing is written inside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.data import load_dataset  # noqa: E402
from bench.data.stream import training_source  # noqa: E402

W, H = 500, 375


def _write_class(job: tuple[Path, int, int, int]) -> None:
    folder, cls, n, seed = job
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grain = rng.integers(-24, 24, (4, H, W, 3), dtype=np.int16)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.int16)
    for i in range(n):
        a, b, c = rng.integers(0, 256, 3)
        base = np.stack([(xx * a // W), (yy * b // H), ((xx + yy) * c // (W + H))], axis=-1) + (cls * 7) % 64
        img = np.clip(base + grain[i % 4], 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.JPEG", quality=90)


def make_tree(root: Path, classes: int, train: int, val: int) -> tuple[int, float]:
    jobs = [(root / split / f"c{c:03d}", c, n, c * 2 + (split == "val"))
            for split, n in (("train", train), ("val", val)) for c in range(classes)]
    have = sum(len(list(j[0].glob("*.JPEG"))) if j[0].is_dir() else 0 for j in jobs)
    want = classes * (train + val)
    if have == want:
        return want, 0.0
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_class, jobs))
    return want, time.perf_counter() - t0


def prepare(tree: Path, store: Path, size: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench", "data", "prepare", "imagefolder", "--size", str(size),
                          "--data-root", str(tree), "--out", str(store)], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(out.stderr)
    return {"printed": out.stdout.strip().splitlines()[-1], "wall_s": round(wall, 1),
            "store_bytes": sum(p.stat().st_size for p in store.iterdir())}


def epoch(source, order: torch.Tensor, batch: int) -> dict:
    steps = len(order) // batch
    t0 = time.perf_counter()
    n = 0
    for _, x in source.batches(order, batch, steps):
        n += len(x)
    secs = time.perf_counter() - t0
    return {"batches_per_s": round(steps / secs, 1), "images_per_s": round(n / secs), "seconds": round(secs, 2)}


def read(store: Path, batch: int) -> dict:
    ds = load_dataset("imagefolder", str(store))
    cpu = torch.device("cpu")
    order = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))
    streamed = training_source(ds, cpu)
    resident = training_source(replace(ds, train_x=ds.train_x.clone()), cpu, stream=False)
    out = {"streamed_type": type(streamed).__name__, "resident_type": type(resident).__name__}
    for name, src in (("streamed", streamed), ("resident", resident)):
        out[name] = [epoch(src, order, batch) for _ in range(2)]  # the first streamed epoch also faults pages in
    return out


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": model,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/repbench-loader"))
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    tree = a.root / "tree"
    n, gen_s = make_tree(tree, a.classes, a.train, a.val)
    jpeg_bytes = sum(f.stat().st_size for f in (tree / "train").rglob("*.JPEG"))
    result = {"machine": machine(), "tree": {"images": n, "train": a.classes * a.train, "generate_s": round(gen_s, 1),
                                             "mean_jpeg_kb": round(jpeg_bytes / (a.classes * a.train) / 1024, 1)}}
    for size in map(int, a.sizes.split(",")):
        store = a.root / f"prepared-{size}"
        result[f"prepare_{size}"] = prepare(tree, store, size)
        result[f"read_{size}"] = read(store, a.batch)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
