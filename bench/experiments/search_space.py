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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.config import RunConfig
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


def method_knobs(cls: type[Method]) -> list[Knob]:
    """The knobs searched for this method: the shared ones its Config has, then its own (its range wins)."""
    have = config_defaults(cls)
    knobs = {k.field: k for k in (*SHARED_KNOBS, *cls.search_space)}
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
