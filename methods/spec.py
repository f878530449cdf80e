"""The plain types a method file declares itself with, and the harness reads: its recipe, its views, its
search knobs and its named ablations, and the values each config field accepts (``opt``, checked by ``check``).
Frozen dataclasses, no behaviour beyond small helpers."""

from __future__ import annotations

import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any

from bench.core.errors import UsageError

# Upper bounds of what allocates memory or compute, at values a researcher could really want: far above what
# these papers used, far below a request that would exhaust a machine. Widths, output dimensions, prototypes,
# centroids: up to DINO's K = 65536. Convolution channels (a k x k kernel holds channels^2 k^2 weights): up to
# 4096, twice ResNet-50's widest stage. Queues, memory-bank samples, sampled patches: up to 2**20 rows, 16 x
# MoCo's queue. Layers and attention heads: up to 64. Multi-crop local views (a forward pass each): up to 32.
# Text contexts: up to 4096 tokens. Pixel sizes (patches, strides, crops): up to 1024.
MAX_DIM = 65536
MAX_CHANNELS = 4096
MAX_ROWS = 2**20
MAX_DEPTH = 64
MAX_CROPS = 32
MAX_TOKENS = 4096
MAX_IMAGE = 1024
# Temperatures: > 0 and up to 10 (the papers use 0.04-1). Loss weights: up to 1e4 (VICReg's largest is 25).
# Colour-jitter strength s: ColorJitter's hue range is 0.2 s, which kornia caps at 0.5.
MAX_TEMPERATURE = 10.0
MAX_WEIGHT = 1e4
MAX_JITTER = 2.5
# The field kinds a declaration is required for (booleans, dicts and nested configs need none).
DECLARED_KINDS = (int, float, str)

Bound = float | str  # a number, or the name of another field of the same config (its value)


@dataclass(frozen=True)
class Spec:
    """The values a config field accepts, declared next to its default by ``opt``. Each condition given must
    hold; a tuple field's spec holds for each element. ``None`` passes where the annotation allows it."""

    ge: Bound | None = None
    gt: Bound | None = None
    le: Bound | None = None
    lt: Bound | None = None
    choices: tuple[Any, ...] | None = None
    multiple_of: tuple[Bound, ...] = ()
    pattern: str | None = None  # a regular expression the whole text must match
    means: str = ""  # the pattern in words, for the error message


def opt(default: Any, *, multiple_of: Bound | tuple[Bound, ...] = (), **conditions: Any) -> Any:
    """A dataclass field with its default and the values it accepts: ``opt(0.1, gt=0, le=10)``,
    ``opt("mlp", choices=("mlp", "linear"))``, ``opt(64, ge=1, multiple_of="heads")``."""
    multiple = multiple_of if isinstance(multiple_of, tuple) else (multiple_of,)
    return field(default=default, metadata={"spec": Spec(multiple_of=multiple, **conditions)})


def spec_of(cls: type, name: str) -> Spec | None:
    """The declaration of field ``name``; a subclass that only changes a default keeps its parent's."""
    for klass in cls.__mro__:
        if is_dataclass(klass):
            found = [f.metadata["spec"] for f in fields(klass) if f.name == name and "spec" in f.metadata]
            if found:
                return found[0]
    return None


def undeclared(cls: type) -> list[str]:
    """Fields holding numbers or text (or tuples of them) without a declaration."""
    return [f.name for f in fields(cls)
            if spec_of(cls, f.name) is None and _leaf_types(_hints(cls)[f.name]) & set(DECLARED_KINDS)]


def check(cfg: Any, owner: str) -> None:
    """Raise UsageError, one line naming ``owner``, the field, its value and what is accepted, for the first
    field of the dataclass ``cfg`` that its annotation or its declaration refuses."""
    values = vars(cfg)
    for f in fields(cfg):
        problem = field_problem(type(cfg), f.name, values)
        if problem:
            default = "" if f.default is MISSING else f" (default {f.default!r})"
            raise UsageError(f"{owner} {f.name}={reprlib.repr(values[f.name])} {problem}{default}")


def field_problem(cls: type, name: str, values: Mapping[str, Any]) -> str | None:
    """What is wrong with ``values[name]`` as field ``name`` of ``cls``, or None."""
    hint, value, s = _hints(cls)[name], values[name], spec_of(cls, name)
    if not _fits(hint, value):
        return f"should be {_describe(hint)}"
    if s is None or value is None:
        return None
    items = value if isinstance(value, tuple) else (value,)
    each = "each element " if isinstance(value, tuple) else "it "
    rule = _rule(s, values)
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        return f"is not a finite number; {each}must be {rule}"
    if any(not _holds(s, v, values) for v in items):
        return f"is invalid: {each}must be {rule}"
    return None


@dataclass(frozen=True)
class Recipe:
    """The engineering around a method: optimiser, schedule, and the learning-rate rule.

    ``lr`` is the base rate for a batch of 256; the loop uses ``lr * batch_size / 256`` (the linear
    scaling rule of Goyal et al. 2017, used by SimCLR, MoCo v3, DINO, MAE, ...).
    """

    optimizer: str = opt("sgd", choices=("sgd", "lars", "adamw"))
    lr: float = opt(0.06, gt=0, le=100)  # as --lr
    # The search draws up to 100 x the paper's (CLIP's 0.2 -> 20) where --weight-decay stops at 10.
    weight_decay: float = opt(5e-4, ge=0, le=100)
    momentum: float = opt(0.9, ge=0, le=1)
    warmup_epochs: float = opt(0.0, ge=0, le=100_000)  # at most --epochs' maximum
    schedule: str = opt("cosine", choices=("cosine", "constant", "step"))  # step: x0.1 at each of ``milestones``
    betas: tuple[float, float] = opt((0.9, 0.999), ge=0, lt=1)
    # Fractions of training where ``step`` multiplies the rate by 0.1.
    milestones: tuple[float, ...] = opt((0.6, 0.8), ge=0, le=1)
    # Weight decay follows a cosine from weight_decay to this (DINO).
    final_weight_decay: float | None = opt(None, ge=0, le=100)
    clip_grad: float = opt(0.0, ge=0, le=1e6)  # > 0: clip each parameter's gradient norm to this (DINO's clip_gradients)
    # Parameter-name prefixes whose rate skips the schedule (SimSiam's predictor).
    fixed_lr: tuple[str, ...] = opt((), pattern=r".+", means="a parameter-name prefix")
    # Base-rate multiplier for biases and norm parameters (Barlow Twins: 0.024).
    no_decay_lr_scale: float = opt(1.0, ge=0, le=1000)
    # Decay (and LARS-adapt) biases and norm parameters too, as MoCo v1/v2, SimSiam, InstDisc and SwAV's official
    # code does (their optimisers take model.parameters() whole); the default exempts them (SimCLR App. B.1).
    decay_norm_bias: bool = False

    def scaled_lr(self, batch_size: int) -> float:
        return self.lr * batch_size / 256


# The recipe every method shares in a fair comparison (same backbone, data and budget). SGD+momentum with
# cosine decay is what lightly's and solo-learn's CIFAR benchmarks use for most methods; lr 0.06 x bs/256 is
# lightly's SimCLR/MoCo setting.
UNIFIED_RECIPE = Recipe()


@dataclass(frozen=True)
class ViewConfig:
    """One augmented view; SimCLR's recipe by default (Chen et al. 2020, App. A).

    ``strength`` scales the colour jitter (SimCLR's s). ``size`` None keeps the dataset's size.
    Colour-only operations (saturation, hue, grayscale) are skipped on single-channel images.
    """

    size: int | None = None
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    strength: float = 0.5
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


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


@dataclass(frozen=True)
class Cell:
    """One cell of an ablation: a label and the method-config values it changes."""

    label: str
    args: Mapping[str, Any] = field(default_factory=dict)


def cell(label: str, **args: Any) -> Cell:
    return Cell(label, args)


@dataclass(frozen=True)
class Ablation:
    """A named ablation a method's paper ran: its cells, the claim being repeated, and the recipe it ran under."""

    cells: tuple[Cell, ...]
    claim: str
    recipe: str = "paper"  # paper: as the paper ablated; unified: the shared recipe



@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaf_types(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    return set().union(*(_leaf_types(a) for a in args if a is not Ellipsis)) if args else {hint}


def _fits(hint: Any, value: Any) -> bool:
    """``value`` as JSON gives it against a field's annotation: ints pass for floats, never booleans for numbers."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if args[-1:] == (Ellipsis,):
            return all(_fits(args[0], v) for v in value)
        return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value, strict=True))
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if isinstance(origin or hint, type):
        return isinstance(value, origin or hint)
    return True  # Any


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        n = "" if args[-1:] == (Ellipsis,) else f"{len(args)} "
        return f"a list of {n}{_describe(args[0]).removeprefix('a ')}s"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a text", type(None): "null"}
    return names.get(hint, f"a {hint.__name__}" if isinstance(hint, type) else str(hint))


def _value(bound: Bound, values: Mapping[str, Any]) -> Any:
    return values[bound] if isinstance(bound, str) else bound


def _holds(s: Spec, v: Any, values: Mapping[str, Any]) -> bool:
    if s.choices is not None and v not in s.choices:
        return False
    if s.pattern is not None and not re.fullmatch(s.pattern, v):
        return False
    bounds = ((s.ge, lambda b: v >= b), (s.gt, lambda b: v > b), (s.le, lambda b: v <= b), (s.lt, lambda b: v < b))
    if not all(ok(_value(b, values)) for b, ok in bounds if b is not None):
        return False
    # A zero or missing divisor is its own field's error, reported there.
    multiples = [_value(m, values) for m in s.multiple_of]
    return all(v % m == 0 for m in multiples if isinstance(m, int) and m > 0)


def _rule(s: Spec, values: Mapping[str, Any]) -> str:
    """The declaration in words: "> 0 and <= 10", "one of 'mlp', 'linear'", "a multiple of heads (4)"."""
    def show(b: Bound) -> str:
        return f"{b} ({values[b]})" if isinstance(b, str) else f"{b:g}" if isinstance(b, float) else str(b)

    parts = [f"{op} {show(b)}" for op, b in ((">=", s.ge), (">", s.gt), ("<=", s.le), ("<", s.lt)) if b is not None]
    if s.choices is not None:
        parts.append("one of " + ", ".join(repr(c) for c in s.choices))
    parts += [f"a multiple of {show(m)}" for m in s.multiple_of]
    if s.pattern is not None:
        parts.append(s.means or f"a text matching {s.pattern!r}")
    return " and ".join(parts)
