"""`repbench list KIND`: registered names, one per line (other tools parse this)."""

from __future__ import annotations

import argparse

NAME = "list"
HELP = "list registered methods, protocols, datasets, backbones or suites"
KINDS = ("methods", "protocols", "datasets", "backbones", "suites")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS)


def registry(kind: str):
    import methods
    import protocols
    from bench.data import DATASETS
    from bench.suites import SUITES

    return {"methods": methods.METHODS, "protocols": protocols.PROTOCOLS, "datasets": DATASETS,
            "backbones": methods.BACKBONES, "suites": SUITES}[kind]


def run(a: argparse.Namespace) -> int:
    for name in registry(a.kind).names():
        print(name)
    return 0
