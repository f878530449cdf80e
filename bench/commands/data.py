"""`repbench data fetch NAME`: put a dataset where repbench finds it without internet at run time."""

from __future__ import annotations

import argparse

NAME = "data"
HELP = "fetch datasets (Debian package or torchvision download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["fetch"])
    p.add_argument("dataset")


def run(a: argparse.Namespace) -> int:
    from bench.data import DATASETS, fetch_fashion_mnist
    from bench.errors import UsageError

    DATASETS.get(a.dataset)
    if a.dataset != "fashion-mnist":
        print(f"{a.dataset} needs no fetching: it ships with a package or is generated")
        return 0
    try:
        print(fetch_fashion_mnist())
    except UsageError:
        raise
    return 0
