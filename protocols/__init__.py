"""Evaluation protocols on frozen features; importing this package registers them all."""

import importlib
import pkgutil

from protocols.base import PROTOCOLS, Features, Metrics

# Every module in this package registers itself; a new protocol file needs no edit here.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in {"base"}:
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["PROTOCOLS", "Features", "Metrics"]
