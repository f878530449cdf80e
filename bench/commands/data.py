"""`repbench data fetch NAME`: put a dataset where repbench finds it without internet at run time."""

from __future__ import annotations

import argparse

from bench.data import DATASETS
from bench.data.fashion_mnist import fetch_fashion_mnist


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Fashion-MNIST is looked up in $REPBENCH_DATA, else the Debian package's folder, else the download "
                "cache; its .gz files are unpacked into $REPBENCH_CACHE (default ~/.cache/repbench). An environment "
                "variable set to an empty value counts as unset.")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("dataset")


def run(a: argparse.Namespace) -> int:
    DATASETS.get(a.dataset)
    if a.dataset not in ("fashion-mnist", "fashion-mnist-captions"):
        print(f"{a.dataset} needs no fetching: it ships with a package or is generated")
        return 0
    print(fetch_fashion_mnist())
    return 0
