"""Search spaces: one shared space for the knobs every method has, plus the method's own (``Method.search_space``).

Budgets are comparable across methods because every method searches the same shared knobs over ranges of the
same width, centred on its own paper setting:

- ``lr``: the recipe's base lr (for batch 256), log-uniform over [paper / 10, paper x 10];
- ``weight_decay``: log-uniform over [paper / 100, paper x 100] (linear [0, 1e-3] when the paper uses none);
- ``batch_size``: one of 64 / 128 / 256 (and the suite's own), those that fit the training split;
- the method-config knobs of ``SHARED_KNOBS`` (temperature, crop scale, colour-jitter strength) wherever the
  method's ``Config`` has a field of that name.

The optimiser, momentum, warm-up and schedule stay the paper's. Every range is widened to contain the paper
default, which the search enqueues as its first trial.

``repbench search --space FILE`` adds a user's knobs of the same form as ``Method.search_space`` (a TOML table per
Config field: ``low``, ``high``, ``log``, ``integer`` or ``choices``); its range wins over the method's own, and
it applies to every searched method whose Config has the field::

    [temperature]
    low = 0.05
    high = 0.5
    log = true

    [head]
    choices = ["mlp", "linear"]
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.core.tomlfile import read_toml
from methods.base import Method, config_defaults
from methods.spec import Knob

BATCH_CHOICES = (64, 128, 256)
LR_FACTOR = 10.0
WD_FACTOR = 100.0
WD_RANGE_WITHOUT_PAPER = (0.0, 1e-3)

SHARED_KNOBS = (
    Knob("temperature", 0.05, 1.0, log=True),
    Knob("crop_scale_min", 0.08, 0.6),
    Knob("jitter_strength", 0.0, 1.0),
)


# The --space FILE of this process's search (read_space, use_space): one command searches one space.
USER_SPACE: dict[str, Knob] = {}
KNOB_KEYS = tuple(f.name for f in fields(Knob) if f.name != "field")


def method_knobs(cls: type[Method]) -> list[Knob]:
    """The knobs searched for this method: the shared ones its Config has, then its own, then --space's (the last
    one's range wins)."""
    have = config_defaults(cls)
    knobs = {k.field: k for k in (*SHARED_KNOBS, *cls.search_space, *USER_SPACE.values())}
    return [k for k in knobs.values() if k.field in have]


def suggest_knob(knob: Knob, trial, default: Any) -> Any:
    k = knob.around(default)
    if k.choices is not None:
        return trial.suggest_categorical(k.field, list(k.choices))
    if k.integer:
        return trial.suggest_int(k.field, int(k.low), int(k.high), log=k.log)
    return trial.suggest_float(k.field, float(k.low), float(k.high), log=k.log)


def batch_choices(base: RunConfig, n_train: int) -> list[int]:
    choices = sorted({*BATCH_CHOICES, base.batch_size})
    fit = [b for b in choices if b <= n_train // 2]
    return fit or [min(base.batch_size, max(2, n_train // 2))]


def recipe_ranges(cls: type[Method]) -> dict[str, tuple[float, float, bool]]:
    r = cls.paper_recipe
    wd = ((r.weight_decay / WD_FACTOR, r.weight_decay * WD_FACTOR, True) if r.weight_decay > 0
          else (*WD_RANGE_WITHOUT_PAPER, False))
    return {"lr": (r.lr / LR_FACTOR, r.lr * LR_FACTOR, True), "weight_decay": wd}


def suggest(trial, cls: type[Method], base: RunConfig, n_train: int) -> dict[str, Any]:
    """Draw one point of the space; returns {param: value} (recipe, batch and method-config knobs)."""
    params: dict[str, Any] = {}
    for key, (lo, hi, log) in recipe_ranges(cls).items():
        params[key] = trial.suggest_float(key, lo, hi, log=log)
    params["batch_size"] = trial.suggest_categorical("batch_size", batch_choices(base, n_train))
    defaults = config_defaults(cls)
    for knob in method_knobs(cls):
        params[knob.field] = suggest_knob(knob, trial, defaults[knob.field])
    return params


def paper_defaults(cls: type[Method], base: RunConfig, n_train: int) -> dict[str, Any]:
    """The point the paper used (its recipe, the method's Config defaults); enqueued as trial 0."""
    r = cls.paper_recipe
    batch = base.batch_size if base.batch_size in batch_choices(base, n_train) else batch_choices(base, n_train)[-1]
    defaults = config_defaults(cls)
    return {"lr": r.lr, "weight_decay": r.weight_decay, "batch_size": batch,
            **{k.field: defaults[k.field] for k in method_knobs(cls)}}


def to_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """``base`` (the paper recipe of the method) with one point of the space applied."""
    recipe = replace(base.recipe, lr=params["lr"], weight_decay=params["weight_decay"])
    method_args = {k: v for k, v in params.items() if k not in ("lr", "weight_decay", "batch_size")}
    return replace(base, recipe=recipe, recipe_name="search", batch_size=int(params["batch_size"]),
                   method_args={**base.method_args, **method_args})


def read_space(path: Path) -> list[Knob]:
    """The knobs of a --space file, each checked (one line naming the file and the knob otherwise)."""
    data = read_toml(path, "--space file", "'repbench search --help'", label=f"--space {path}")
    if not data:
        raise UsageError(f"--space {path} declares no knob; give a [FIELD] table with low and high, or choices")
    return [_knob(path, name, table) for name, table in data.items()]


def _knob(path: Path, name: str, table: Any) -> Knob:
    where = f"--space {path}: [{name}]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} should be a table of {', '.join(KNOB_KEYS)}")
    unknown = sorted(set(table) - set(KNOB_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]}; known keys: {', '.join(KNOB_KEYS)}")
    if "choices" in table:
        if not isinstance(table["choices"], list) or not table["choices"] or set(table) - {"choices"}:
            raise UsageError(f"{where}: choices should be a non-empty list, without low, high, log or integer")
        return Knob(name, choices=tuple(table["choices"]))
    lo, hi = table.get("low"), table.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    if not numbers or not lo < hi or (table.get("log") and lo <= 0):
        raise UsageError(f"{where}: give numbers low < high (low > 0 with log = true), or choices = [...]")
    if not all(isinstance(table.get(k, False), bool) for k in ("log", "integer")):
        raise UsageError(f"{where}: log and integer are true or false")
    return Knob(name, float(lo), float(hi), log=table.get("log", False), integer=table.get("integer", False))


def use_space(knobs: list[Knob], classes: list[type[Method]], path: Path) -> None:
    """Search ``knobs`` besides each method's own; a knob no searched method's Config has is refused."""
    for k in knobs:
        if not any(k.field in config_defaults(cls) for cls in classes):
            have = sorted({f for cls in classes for f in config_defaults(cls)})
            raise UsageError(f"--space {path}: no searched method has a field {k.field!r}; their fields: {', '.join(have)}")
    USER_SPACE.clear()
    USER_SPACE.update({k.field: k for k in knobs})
