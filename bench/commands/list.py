"""`repbench list KIND`: registered names, one per line (other tools parse this)."""

from __future__ import annotations

import argparse

from bench import presets
from bench.core.registry import Registry
from bench.data import DATASETS
from bench.experiments import SUITES
from bench.reproduce import table_names
from methods import METHODS
from methods.backbones import BACKBONES
from protocols import PROTOCOLS

REGISTRIES: dict[str, Registry] = {"methods": METHODS, "protocols": PROTOCOLS, "datasets": DATASETS,
                                   "backbones": BACKBONES, "suites": SUITES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=[*REGISTRIES, "presets", "tables"])


def run(a: argparse.Namespace) -> int:
    # Presets and tables are data files, not registered code.
    files = {"presets": presets.names, "tables": table_names}
    for name in files[a.kind]() if a.kind in files else REGISTRIES[a.kind].names():
        print(name)
    return 0
