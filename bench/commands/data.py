"""`repbench data fetch NAME`: put a dataset where repbench finds it without internet at run time."""

from __future__ import annotations

import argparse

from bench.core.errors import UsageError
from bench.data import BUILTIN, DATASETS
from bench.data.fashion_mnist import fetch_fashion_mnist
from bench.data.torchvision_sets import SPECS, fetch

TREES = ("imagefolder", "imagenet", "imagenet100")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Fashion-MNIST is looked up in $REPBENCH_DATA, else the Debian package's folder, else the download "
                "cache; its .gz files are unpacked into $REPBENCH_CACHE (default ~/.cache/repbench). CIFAR-10/100 and "
                "STL-10 are downloaded with torchvision into $REPBENCH_DATA, else $REPBENCH_CACHE/torchvision. An "
                "environment variable set to an empty value counts as unset.")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("dataset")


def run(a: argparse.Namespace) -> int:
    DATASETS.get(a.dataset)
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
