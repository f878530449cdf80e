"""`repbench list KIND`: registered names, one per line (other tools parse this); `list methods -v` adds each method's
paper, options and their defaults.

Each kind's registry is imported only when listed (entries of a registry, as everywhere): every kind is read from a
table (or data files) that imports no torch, so `list` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import MISSING, fields

from bench.core.registry import Registry

# kind -> the registry (or, for data files, the function) listing its names.
KINDS: Registry = Registry("kind", {"methods": "methods:METHODS", "protocols": "protocols:PROTOCOLS",
                                    "datasets": "bench.dataset_registry:DATASETS",
                                    "backbones": "methods.backbone_registry:BACKBONES",
                                    "suites": "bench.experiments:SUITES",
                                    # Presets and tables are data files, not registered code.
                                    "presets": "bench.presets:names", "tables": "bench.presets.catalog:table_names"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS.names(), help="what to list, one name per line")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="methods: also each one's paper, trained_by and options with their defaults (default off)")


def run(a: argparse.Namespace) -> int:
    found = KINDS.get(a.kind)
    names = found.names() if isinstance(found, Registry) else found()
    if a.verbose and a.kind == "methods":
        print("\n".join(describe(name, found.get(name)) for name in names))
        return 0
    for name in names:
        print(name)
    return 0


def describe(name: str, cls: type) -> str:
    """A method's name, the paper it implements (its module's first docstring line), and its Config's options."""
    doc = (inspect.getdoc(sys.modules[cls.__module__]) or "").split("\n\n")[0]
    lines = [name, f"  paper: {' '.join(doc.split()) or '(not stated)'}", f"  trained by: {cls.trained_by}"]
    options = fields(cls.Config)
    lines.append("  options (--method-arg KEY=VALUE):" if options else "  options: none")
    lines += [f"    {f.name} = {_default(f)!r}" for f in options]
    return "\n".join(lines)


def _default(f):
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
