"""User-defined ablation grids: ``repbench ablate --method M --vary KEY=V1,V2,... [--vary ...]`` or ``--grid-file FILE``.

KEY is ``method.FIELD`` (a field of the method's Config, e.g. method.temperature), ``recipe.FIELD`` (the recipe:
lr, weight_decay, warmup_epochs, ...), ``backbone.FIELD`` (the backbone's arguments) or a field of the run itself
(batch_size, epochs, image_size, ...). Values are TOML values (0.1, 64, true, "cosine"; a bare word is text).
The cells are every combination of the values, on the method at the ablation's scale (its dataset, subset, epochs
and batch unless the command line replaces them), each run with every protocol and >= 3 seeds, and reported
like the built-in grids (bench/experiments/ablate_report.py) without claims.

A grid file (TOML) holds ``method``, optionally ``dataset``, ``recipe`` ("unified" or "paper") and ``name``, and
a ``[vary]`` table of lists::

    method = "simclr"
    [vary]
    "method.temperature" = [0.1, 0.2, 0.5]
    "recipe.lr" = [0.3, 0.6]
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.core.tomlfile import read_toml
from bench.experiments.ablate import Grid
from bench.experiments.scales import Scale
from methods import METHODS
from methods.base import config_defaults
from methods.spec import Recipe

FILE_KEYS = ("method", "dataset", "recipe", "name", "vary")
# Run fields a grid may vary; the others are what --vary's other prefixes set, or the grid's own.
RUN_FIELDS = tuple(f.name for f in fields(RunConfig)
                   if f.name not in ("method", "dataset", "seed", "recipe", "recipe_name", "method_args", "backbone_args",
                                     "suite", "device", "protocols", "protocol_args"))
MAX_CELLS = 64


def parse_value(text: str) -> Any:
    """A TOML value (0.1, 64, true, "x", [1, 2]); anything TOML does not read is the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """``["method.temperature=0.1,0.2"]`` -> ``{"method.temperature": [0.1, 0.2]}``."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not parts:
            raise UsageError(f"--vary {item!r} is not KEY=V1,V2,... (e.g. --vary method.temperature=0.1,0.2,0.5)")
        if key.strip() in axes:
            raise UsageError(f"--vary {key.strip()} is given twice; list all its values in one --vary")
        axes[key.strip()] = [parse_value(v) for v in parts]
    return axes


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def read_grid_file(path: Path) -> dict[str, Any]:
    """The checked grid file: its keys, with ``vary`` as {dotted key: [values]}."""
    data = read_toml(path, "grid file", "'repbench ablate --help'")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]}; known keys: {', '.join(FILE_KEYS)}")
    for key in ("method", "vary"):
        if key not in data:
            raise UsageError(f"{path}: missing key {key}; a grid file names the method and a [vary] table of lists")
    if not isinstance(data["vary"], dict) or not data["vary"]:
        raise UsageError(f"{path}: vary should be a table of lists, e.g. [vary] \"method.temperature\" = [0.1, 0.2]")
    data["vary"] = _flat(data["vary"])
    bad = next((k for k, v in data["vary"].items() if not isinstance(v, list) or not v), None)
    if bad:
        raise UsageError(f"{path}: vary.{bad} should be a non-empty list of values, e.g. [0.1, 0.2]")
    return data


def _check_key(method: str, key: str) -> None:
    head, _, leaf = key.partition(".")
    known = {"method": tuple(config_defaults(METHODS.get(method))), "recipe": tuple(f.name for f in fields(Recipe))}
    if head in known and leaf and leaf not in known[head]:
        raise UsageError(f"--vary {key}: {method} has no {head} field {leaf!r}; its fields: {', '.join(known[head])}")
    if not ((head in known or head == "backbone") and leaf and "." not in leaf) and key not in RUN_FIELDS:
        raise UsageError(f"--vary {key}: unknown key; give method.FIELD, recipe.FIELD, backbone.FIELD or one of "
                         f"{', '.join(RUN_FIELDS)}")


def _label(key: str, value: Any) -> str:
    return f"{key.partition('.')[2] or key}={value}"


def build_user_grid(method: str, axes: dict[str, list[Any]], scale: Scale, recipe: str = "unified",
                    name: str | None = None, device: str = "cpu") -> Grid:
    """One cell per combination of the axes' values; each a config at ``scale`` on ``device``."""
    for key in axes:
        _check_key(method, key)
    combos = list(itertools.product(*axes.values()))
    if len(combos) < 2 or len(combos) > MAX_CELLS:
        raise UsageError(f"--vary gives {len(combos)} cell(s); an ablation needs 2 to {MAX_CELLS} (list more values, "
                         "or fewer)")
    default_name = "vary-" + "-".join([method, *(k.rpartition(".")[2] for k in axes)])
    g = Grid(name or re.sub(r"[^A-Za-z0-9_.-]", "_", default_name), recipe=recipe)
    for combo in combos:
        setting = dict(zip(axes, combo, strict=True))
        before = len(g.cells)
        g.add(scale, method, ", ".join(_label(k, v) for k, v in setting.items()),
              **{k.partition(".")[2]: v for k, v in setting.items() if k.startswith("method.")})
        if len(g.cells) == before:  # Grid.add leaves a note instead of a cell; _check_key makes that unreachable
            raise UsageError(g.notes[-1])
        cell = g.cells[-1]
        g.cells[-1] = replace(cell, config=_with(cell.config, setting, device))
    return g


def _with(cfg: RunConfig, setting: dict[str, Any], device: str) -> RunConfig:
    """``cfg`` with the recipe, backbone and run fields of one cell set (method fields are Grid.add's)."""
    recipe = {k.partition(".")[2]: v for k, v in setting.items() if k.startswith("recipe.")}
    backbone = {k.partition(".")[2]: v for k, v in setting.items() if k.startswith("backbone.")}
    run = {k: v for k, v in setting.items() if k in RUN_FIELDS}
    try:
        return replace(cfg, recipe=replace(cfg.recipe, **recipe), backbone_args={**cfg.backbone_args, **backbone},
                       device=device, **run)
    except TypeError as err:
        raise UsageError(f"--vary: {err}; give values of the field's type") from None


def scale_with(scale: Scale, **given: Any) -> Scale:
    """``scale`` with the data and budget the command line gives (None: the scale's own)."""
    return replace(scale, **{k: v for k, v in given.items() if v is not None})
