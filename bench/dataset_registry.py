"""The table of datasets: ``DATASETS`` (re-exported by bench.data), kept apart from the loaders so that listing
names imports no torch. A built-in loader's module is imported when its dataset is asked for.

Datasets from outside the package: ``REPBENCH_DATASETS=NAME=MODULE:FUNCTION[,...]`` registers each
``FUNCTION(data_root=None) -> Dataset`` of an importable MODULE under NAME (read at start-up; a built-in name is
never replaced). An environment variable rather than an entry-point group, so a script needs no package install.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from bench.core.errors import UsageError
from bench.core.registry import Registry

BUILTIN = {
    "cifar10": "bench.data.torchvision_sets:cifar10",
    "cifar100": "bench.data.torchvision_sets:cifar100",
    "digits": "bench.data.digits:digits",
    "fashion-mnist": "bench.data.fashion_mnist:fashion_mnist",
    "fashion-mnist-captions": "bench.data.captions:fashion_mnist_captions",
    "imagefolder": "bench.data.folders:imagefolder",
    "imagenet": "bench.data.folders:imagenet",
    "imagenet100": "bench.data.folders:imagenet100",
    "shapes": "bench.data.captions:shapes",
    "stl10": "bench.data.torchvision_sets:stl10",
}
PLUGIN_RE = re.compile(r"(?P<name>[A-Za-z0-9][\w.-]*)=(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)")
PLUGIN_FORMAT = "REPBENCH_DATASETS=NAME=MODULE:FUNCTION[,NAME=MODULE:FUNCTION...]"


def _plugin(item: str) -> Callable[..., Any]:
    """A loader that imports the user's ``MODULE:FUNCTION`` when the dataset is asked for, errors as one line."""
    m = PLUGIN_RE.fullmatch(item)

    def load(data_root: str | None = None) -> Any:
        if m is None:
            raise UsageError(f"REPBENCH_DATASETS item {item!r} is not NAME=MODULE:FUNCTION; write {PLUGIN_FORMAT}")
        try:
            fn = vars(importlib.import_module(m["module"]))[m["attr"]]
        except (ImportError, KeyError) as err:
            raise UsageError(f"REPBENCH_DATASETS entry {item!r} cannot be loaded ({type(err).__name__}: {err}); make "
                             "MODULE importable (on PYTHONPATH) with a function FUNCTION(data_root=None)") from None
        ds = fn(data_root=data_root)
        if not _is_dataset(ds):
            raise UsageError(f"REPBENCH_DATASETS entry {item!r} returned {type(ds).__name__}, not a bench.data.Dataset")
        return ds

    return load


def _is_dataset(obj: object) -> bool:
    """isinstance of bench.data.Dataset, read from sys.modules: importing bench.data here would import torch at
    start-up, and a Dataset cannot exist before bench.data is imported."""
    data = sys.modules.get("bench.data")
    return data is not None and isinstance(obj, vars(data)["Dataset"])


def _plugins(spec: str | None) -> dict[str, Callable[..., Any]]:
    """Datasets registered from outside the package; a built-in name is never replaced."""
    items = [i.strip() for i in (spec or "").split(",") if i.strip()]
    return {i.partition("=")[0] or i: _plugin(i) for i in items if (i.partition("=")[0] or i) not in BUILTIN}


# Read as bench.data.cache.env_value reads a variable (blank counts as unset); that module imports torch.
DATASETS: Registry[Callable[..., Any]] = Registry(
    "dataset", {**BUILTIN, **_plugins(os.environ.get("REPBENCH_DATASETS", "").strip() or None)})
