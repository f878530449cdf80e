"""`repbench data fetch NAME`: put a dataset where repbench finds it without internet at run time.
`repbench data prepare NAME --size S`: decode it once into a memory-mapped store runs read (bench/data/prepared.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.commands.args import int_range
from bench.core.errors import UsageError
from bench.data import BUILTIN, DATASETS
from bench.data.fashion_mnist import fetch_fashion_mnist
from bench.data.folders import prepare_tree
from bench.data.prepared import check_out, check_preparable, default_out, prepare_loaded
from bench.data.roots import SIZE_RANGE
from bench.data.torchvision_sets import SPECS, fetch

TREES = ("imagefolder", "imagenet", "imagenet100")
PREPARE_ONLY = ("size", "out", "workers", "data_root")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Fashion-MNIST is looked up in $REPBENCH_DATA, else the Debian package's folder, else the download "
                "cache; its .gz files are unpacked into $REPBENCH_CACHE (default ~/.cache/repbench). CIFAR-10/100 and "
                "STL-10 are downloaded with torchvision into $REPBENCH_DATA, else $REPBENCH_CACHE/torchvision. An "
                "environment variable set to an empty value counts as unset. 'prepare' decodes a dataset once into a "
                "store of uint8 .npy files (--out, default $REPBENCH_CACHE/prepared/NAME-S); pass it to runs as "
                "--data-root.")
    p.add_argument("action", choices=["fetch", "prepare"], help="fetch: download or copy; prepare: decode into a store")
    p.add_argument("dataset", help="dataset name (see 'repbench list datasets')")
    p.add_argument("--size", type=int_range(*SIZE_RANGE), help="prepare: image side in pixels (default: the dataset's own)")
    p.add_argument("--data-root", help="prepare: the dataset's folder (default: where runs look)")
    p.add_argument("--out", help="prepare: the store's folder (default $REPBENCH_CACHE/prepared/NAME-SIZE)")
    p.add_argument("--workers", type=int_range(0, 256), help="prepare: decoding processes for trees (default: one per core)")


def run(a: argparse.Namespace) -> int:
    DATASETS.get(a.dataset)
    if a.action == "prepare":
        return prepare(a)
    given = [f"--{k.replace('_', '-')}" for k in PREPARE_ONLY if vars(a)[k] is not None]
    if given:
        raise UsageError(f"{given[0]} is an option of 'repbench data prepare', not of fetch; drop it")
    if a.dataset in TREES:
        raise UsageError(f"{a.dataset} cannot be fetched by repbench (ImageNet needs a sign-up at image-net.org); put "
                         "the images in ROOT/train/<class>/ and ROOT/val/<class>/ and pass --data-root ROOT")
    if a.dataset in SPECS:
        print(fetch(a.dataset))
    elif a.dataset not in BUILTIN:
        print(f"{a.dataset} is registered through REPBENCH_DATASETS: its own loader finds its files")
    elif a.dataset in ("fashion-mnist", "fashion-mnist-captions"):
        print(fetch_fashion_mnist())
    else:
        print(f"{a.dataset} needs no fetching: it ships with a package or is generated")
    return 0


def prepare(a: argparse.Namespace) -> int:
    if a.size is None:
        raise UsageError(f"'repbench data prepare {a.dataset}' needs --size S, the image side in pixels (e.g. --size 64)")
    check_preparable(a.dataset)
    # Created only when the store is written: bad input leaves no empty cache folder behind.
    out = Path(a.out) if a.out else default_out(a.dataset, a.size)
    check_out(out)  # before minutes of decoding
    if a.dataset in TREES:
        workers = len(os.sched_getaffinity(0)) if a.workers is None else a.workers
        folder, n, secs = prepare_tree(a.dataset, a.size, a.data_root, out, workers)
    else:
        folder, n, secs = prepare_loaded(a.dataset, a.size, a.data_root, out)
    print(folder.absolute())
    print(f"prepared {n:,} {a.dataset} images at {a.size} px in {secs:.1f} s: {n / max(secs, 1e-9):,.0f} images/s")
    return 0
