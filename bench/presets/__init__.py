"""Published configurations as TOML data files (one per setting, shipped with the package).

A file writes out every field a run needs -- method, data, backbone, budget, the whole recipe, every method
option -- and the number it was published with, so a reproduction differs from its source only where a
file's notes say so. ``--config FILE`` reads a user's file of the same form.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.core.tomlfile import read_toml
from methods.spec import Recipe

PRESET_DIR = Path(__file__).parent
TABLES = ("recipe", "method_args", "backbone_args")
TOP_KEYS = ("method", "dataset", "backbone", "epochs", "batch_size", "protocols", *TABLES, "published")
# Measurement settings, and BatchNorm across ranks (sync_bn), a file may leave at RunConfig's defaults.
TOP_OPTIONAL = ("image_size", "knn_every", "online_linear", "protocol_args", "sync_bn")
# The rest of a run's config, so a file can pin a whole record (repbench config --run); the device is the machine's.
RUN_OPTIONAL = tuple(f.name for f in fields(RunConfig) if f.name not in (*TOP_KEYS, *TOP_OPTIONAL, "device", "suite"))
PUBLISHED_KEYS = ("metric", "value", "source")
PUBLISHED_OPTIONAL = ("notes", "published_lr")
RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
# TOML has no null: a recipe field whose default is None (no schedule of it) may be left out.
RECIPE_REQUIRED = tuple(f.name for f in fields(Recipe) if f.default is not None)


def names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def path_of(name: str) -> Path:
    if name not in names():
        raise UsageError(f"unknown preset {name!r}; see 'repbench list presets'")
    return PRESET_DIR / f"{name}.toml"


def read(path: Path, user: bool = False) -> dict[str, Any]:
    """The checked contents of a preset file: one line naming the file and the key when a key is unknown or missing."""
    data = read_toml(path, "config file", "bench/presets/*.toml")
    check_keys(data, str(path), user)
    return data


def check_keys(data: dict[str, Any], where: str, user: bool = False) -> None:
    """A shipped preset states what it was published with; a ``user`` file (--config) may leave [published] out."""
    required = tuple(k for k in TOP_KEYS if not (user and k == "published"))
    _keys(data, where, "", required, TOP_KEYS + TOP_OPTIONAL + RUN_OPTIONAL)
    for table in (*TABLES, *[t for t in ("published", "protocol_args") if t in data]):
        if not isinstance(data[table], dict):
            raise UsageError(f"{where}: {table} should be a table ([{table}]); see bench/presets/*.toml")
    _keys(data["recipe"], where, "recipe.", RECIPE_REQUIRED, RECIPE_KEYS)
    _keys(data.get("published", {}), where, "published.", PUBLISHED_KEYS if "published" in data else (),
          PUBLISHED_KEYS + PUBLISHED_OPTIONAL)


def _keys(table: dict[str, Any], where: str, prefix: str, required: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown key {prefix}{unknown[0]}; known keys: {', '.join(known)}")
    missing = [k for k in required if k not in table]
    if missing:
        raise UsageError(f"{where}: missing key {prefix}{missing[0]}; a preset writes out every field it needs")


def override(data: dict[str, Any], pairs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``KEY=VALUE`` overrides (``epochs``, ``recipe.lr``, ``method_args.temperature``)."""
    out = copy.deepcopy(data)
    for key, value in pairs.items():
        head, _, leaf = key.partition(".")
        if not leaf and head in TOP_KEYS + TOP_OPTIONAL + RUN_OPTIONAL and head not in (*TABLES, "published", "protocol_args"):
            out[head] = value
        elif leaf and "." not in leaf and head in TABLES and (head != "recipe" or leaf in RECIPE_KEYS):
            out[head][leaf] = value
        elif head == "protocol_args" and leaf.count(".") == 1:
            name, setting = leaf.split(".")
            out.setdefault("protocol_args", {}).setdefault(name, {})[setting] = value
        else:
            settable = [k for k in TOP_KEYS + TOP_OPTIONAL + RUN_OPTIONAL if k not in (*TABLES, "published", "protocol_args")] + \
                [f"{t}.KEY" for t in TABLES] + ["protocol_args.PROTOCOL.KEY"]
            raise UsageError(f"--set {key}: unknown key; give one of {', '.join(settable)}")
    return out


def to_config(data: dict[str, Any], recipe_name: str) -> RunConfig:
    """The RunConfig a checked preset describes, validated by RunConfig's and Recipe's own checks; ``recipe_name``
    is the caller's (from the file's own recipe_name where it gives one, see preset_flags)."""
    if not isinstance(data["protocols"], list):
        raise UsageError(f"protocols={data['protocols']!r} should be a list of protocol names, e.g. [\"knn\"]")
    recipe = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["recipe"].items()})
    return RunConfig(method=data["method"], dataset=data["dataset"], backbone=data["backbone"], epochs=data["epochs"],
                     batch_size=data["batch_size"], recipe=recipe, recipe_name=recipe_name,
                     method_args=dict(data["method_args"]), backbone_args=dict(data["backbone_args"]),
                     protocols=tuple(data["protocols"]), image_size=data.get("image_size"),
                     protocol_args={k: dict(v) for k, v in data.get("protocol_args", {}).items()},
                     knn_every=data.get("knn_every", 0), online_linear=data.get("online_linear", False),
                     sync_bn=data.get("sync_bn", True),
                     **{k: tuple(data[k]) if isinstance(data[k], list) else data[k] for k in RUN_OPTIONAL
                        if k in data and k != "recipe_name"})
