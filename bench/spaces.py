"""Search spaces: one shared space for the knobs every method has, plus a few per-method knobs.

Budgets are comparable across methods because every method searches the same shared knobs over
ranges of the same width, centred on its own paper setting:

- ``lr``: the recipe's base lr (for batch 256), log-uniform over [paper / 10, paper x 10];
- ``weight_decay``: log-uniform over [paper / 100, paper x 100] (linear [0, 1e-3] when the paper uses none);
- ``batch_size``: one of 64 / 128 / 256 (and the suite's own), those that fit the training split;
- the method-config knobs of ``SHARED_KNOBS`` (temperature, crop scale, colour-jitter strength) wherever
  the method's ``Config`` has a field of that name.

The optimiser, momentum, warm-up and schedule stay the paper's. ``SPACES`` adds each method's own
ideas (EMA momentum, queue size, teacher temperature...); a knob whose field the method's Config lacks
is skipped and listed by ``missing_knobs`` so the gap is visible, never silent.
Every range is widened to contain the paper default, which the search enqueues as its first trial.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from bench.config import RunConfig
from methods.base import Method

BATCH_CHOICES = (64, 128, 256)
LR_FACTOR = 10.0
WD_FACTOR = 100.0
WD_RANGE_WITHOUT_PAPER = (0.0, 1e-3)


@dataclass(frozen=True)
class Knob:
    """One method-config field to search: a float range (optionally log), an integer range, or choices."""

    field: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def around(self, default: Any) -> Knob:
        """The same knob with its range or choices widened to contain ``default``."""
        if self.choices is not None:
            return self if default in self.choices else replace(self, choices=(*self.choices, default))
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return replace(self, choices=(default,))
        if self.log and default <= 0:
            return self
        return replace(self, low=min(self.low, default), high=max(self.high, default))

    def suggest(self, trial, default: Any) -> Any:
        k = self.around(default)
        if k.choices is not None:
            return trial.suggest_categorical(k.field, list(k.choices))
        if k.integer:
            return trial.suggest_int(k.field, int(k.low), int(k.high), log=k.log)
        return trial.suggest_float(k.field, float(k.low), float(k.high), log=k.log)


SHARED_KNOBS = (
    Knob("temperature", 0.05, 1.0, log=True),
    Knob("crop_scale_min", 0.08, 0.6),
    Knob("jitter_strength", 0.0, 1.0),
)

_EMA = Knob("momentum", choices=(0.9, 0.99, 0.996, 0.999))
_QUEUE = Knob("queue_size", choices=(256, 1024, 4096))
SPACES: dict[str, tuple[Knob, ...]] = {
    "simclr": (Knob("out_dim", choices=(64, 128, 256)),),
    "moco-v1": (_EMA, _QUEUE),
    "moco-v2": (_EMA, _QUEUE),
    "moco-v3": (_EMA,),
    "byol": (_EMA,),
    "dino": (Knob("teacher_temp", 0.02, 0.1, log=True), Knob("center_momentum", choices=(0.8, 0.9, 0.99)),
             Knob("momentum", choices=(0.99, 0.996, 0.999))),
    "simsiam": (Knob("blur_p", 0.0, 1.0),),
    "barlowtwins": (Knob("lambd", 1e-3, 2e-2, log=True),),
    "vicreg": (Knob("sim_coeff", 5.0, 50.0, log=True),),
    "swav": (Knob("epsilon", 0.02, 0.1, log=True), Knob("prototypes", choices=(30, 100, 300, 3000))),
    "instdisc": (Knob("bank_momentum", 0.3, 0.9),),
    "supervised": (Knob("label_smoothing", 0.0, 0.2),),
    "mae": (Knob("mask_ratio", 0.5, 0.9),),
    "autoencoder": (Knob("noise_level", 0.1, 0.5),),
    "clip": (Knob("init_temperature", 0.02, 0.2, log=True),),
}


def config_defaults(cls: type[Method]) -> dict[str, Any]:
    return {f.name: getattr(cls.Config(), f.name) for f in fields(cls.Config)}


def method_knobs(name: str, cls: type[Method]) -> list[Knob]:
    """The knobs searched for this method: shared ones it has, then its own ones it has."""
    have = config_defaults(cls)
    knobs = {k.field: k for k in (*SHARED_KNOBS, *SPACES.get(name, ()))}  # a method's own range wins
    return [k for k in knobs.values() if k.field in have]


def missing_knobs(name: str, cls: type[Method]) -> list[str]:
    have = config_defaults(cls)
    return [k.field for k in SPACES.get(name, ()) if k.field not in have]


def batch_choices(base: RunConfig, n_train: int) -> list[int]:
    choices = sorted({*BATCH_CHOICES, base.batch_size})
    fit = [b for b in choices if b <= n_train // 2]
    return fit or [min(base.batch_size, max(2, n_train // 2))]


def recipe_ranges(cls: type[Method]) -> dict[str, tuple[float, float, bool]]:
    r = cls.paper_recipe
    wd = ((r.weight_decay / WD_FACTOR, r.weight_decay * WD_FACTOR, True) if r.weight_decay > 0
          else (*WD_RANGE_WITHOUT_PAPER, False))
    return {"lr": (r.lr / LR_FACTOR, r.lr * LR_FACTOR, True), "weight_decay": wd}


def suggest(trial, name: str, cls: type[Method], base: RunConfig, n_train: int) -> dict[str, Any]:
    """Draw one point of the space; returns {param: value} (recipe, batch and method-config knobs)."""
    params: dict[str, Any] = {}
    for key, (lo, hi, log) in recipe_ranges(cls).items():
        params[key] = trial.suggest_float(key, lo, hi, log=log)
    params["batch_size"] = trial.suggest_categorical("batch_size", batch_choices(base, n_train))
    defaults = config_defaults(cls)
    for knob in method_knobs(name, cls):
        params[knob.field] = knob.suggest(trial, defaults[knob.field])
    return params


def paper_defaults(name: str, cls: type[Method], base: RunConfig, n_train: int) -> dict[str, Any]:
    """The point the paper used (its recipe, the method's Config defaults); enqueued as trial 0."""
    r = cls.paper_recipe
    batch = base.batch_size if base.batch_size in batch_choices(base, n_train) else batch_choices(base, n_train)[-1]
    defaults = config_defaults(cls)
    return {"lr": r.lr, "weight_decay": r.weight_decay, "batch_size": batch,
            **{k.field: defaults[k.field] for k in method_knobs(name, cls)}}


def to_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """``base`` (the paper recipe of the method) with one point of the space applied."""
    recipe = replace(base.recipe, lr=params["lr"], weight_decay=params["weight_decay"])
    method_args = {k: v for k, v in params.items() if k not in ("lr", "weight_decay", "batch_size")}
    return replace(base, recipe=recipe, recipe_name="search", batch_size=int(params["batch_size"]),
                   method_args={**base.method_args, **method_args})
