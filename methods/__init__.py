"""Representation-learning methods; importing this package registers every method file in it."""

import importlib
import pkgutil

from methods.backbones import BACKBONES
from methods.base import METHODS, Batch, Context, Method

# Every module here registers what it defines (methods, backbones), so a new method is one new file.
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["BACKBONES", "METHODS", "Batch", "Context", "Method"]
