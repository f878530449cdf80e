"""Fault injection, method options: every value a Config field declares invalid is refused with one line.

The hostile cases are drawn from the declarations themselves (methods/spec.py ``opt``): for every registered
method and every declared field, just below its minimum, just above its maximum, NaN, +-infinity, text for a
number, null where the field is not optional, a wrong choice, a wrong multiple, a tuple with a bad element or
the wrong length. Each must raise UsageError from ``make_config`` (the check every run passes before anything
is loaded), in one line naming the method and the option. A CLI sample checks the same through ``repbench run``
(exit 2, one line, nothing written, stopped before data loading); records and JSON values check the other ways
a number enters a RunConfig.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from typing import Any

import pytest

import bench.runner
import methods.spec as spec
from bench.commands.run import parse_method_args
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.experiments import SUITES
from bench.experiments.ablate import build_one, grid_names
from bench.experiments.scales import SCALES
from bench.experiments.search_space import method_knobs
from methods import METHODS
from methods.base import Context, config_defaults, make_config
from methods.spec import Recipe

NAN, INF = math.nan, math.inf


def _kinds(hint: Any) -> set[type]:
    """The plain types a field's annotation allows (int | None -> {int, NoneType})."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return {tuple}
    return {a for a in args} if args else {hint}


def _resolve(bound: Any, defaults: dict[str, Any]) -> Any:
    return defaults[bound] if isinstance(bound, str) else bound


def _outside(s: spec.Spec, integer: bool, defaults: dict[str, Any]) -> list[tuple[str, Any]]:
    """Values just outside the declared bounds, choices, multiples and pattern of one (scalar) value."""
    down = (lambda x: x - 1) if integer else (lambda x: math.nextafter(x, -INF))
    up = (lambda x: x + 1) if integer else (lambda x: math.nextafter(x, INF))
    out = []
    if s.ge is not None:
        out.append(("below-min", down(_resolve(s.ge, defaults))))
    if s.gt is not None:
        out.append(("at-open-min", _resolve(s.gt, defaults)))
    if s.le is not None:
        out.append(("above-max", up(_resolve(s.le, defaults))))
    if s.lt is not None:
        out.append(("at-open-max", _resolve(s.lt, defaults)))
    if s.choices is not None:
        out.append(("wrong-choice", "weird" if all(isinstance(c, str) for c in s.choices) else max(s.choices) + 1))
    if s.pattern is not None:
        out += [("off-pattern", "no slot here"), ("bad-braces", "a {x} and {}")]
    return out


def _hostile(name: str, cls: type) -> list:
    hints = typing.get_type_hints(cls.Config)
    defaults = config_defaults(cls)
    cases = []
    for f in fields(cls.Config):
        kinds, default, s = _kinds(hints[f.name]), defaults[f.name], spec.spec_of(cls.Config, f.name)
        values: list[tuple[str, Any]] = []
        if kinds & {int, float}:
            values += [("nan", NAN), ("inf", INF), ("-inf", -INF), ("text", "hot")]
        if type(None) not in kinds:
            values.append(("null", None))
        if bool in kinds:
            values += [("text", "yes"), ("number", 1)]
        if str in kinds:
            values.append(("number", 3))
        if s is not None and tuple not in kinds:
            values += _outside(s, int in kinds and float not in kinds, defaults)
            for m in s.multiple_of:
                if isinstance(default, int) and _resolve(m, defaults) > 1:
                    values.append((f"not-multiple-of-{m}", default + 1))
        if tuple in kinds:
            element = typing.get_args(hints[f.name])[0]
            integer = element is int
            bad = _outside(s, integer, defaults) if s is not None else []
            bad += [("nan", NAN), ("inf", INF), ("text", "hot")]
            values += [(f"element-{label}", (v, *default[1:])) for label, v in bad]
            if Ellipsis not in typing.get_args(hints[f.name]):
                values.append(("wrong-length", (*default, default[0])))
        cases += [pytest.param(name, f.name, v, id=f"{name}-{f.name}-{label}") for label, v in values]
    return cases


HOSTILE = [case for name, cls in METHODS.items() for case in _hostile(name, cls)]


@pytest.mark.parametrize("method,option,value", HOSTILE)
def test_hostile_option_is_one_clear_line(method, option, value):
    with pytest.raises(UsageError) as err:
        make_config(METHODS.get(method), {option: value})
    msg = str(err.value)
    assert "\n" not in msg and method in msg and option in msg, msg


def _boundaries(name: str, cls: type) -> list:
    """The declared bounds themselves (ge / le) and each choice, which are valid values."""
    defaults = config_defaults(cls)
    hints = typing.get_type_hints(cls.Config)
    specs = {f.name: spec.spec_of(cls.Config, f.name) for f in fields(cls.Config)}
    # A field another field's bound or multiple names moves that field's valid range with it.
    linked = {b for s in specs.values() if s for b in (s.ge, s.gt, s.le, s.lt, *s.multiple_of) if isinstance(b, str)}
    cases = []
    for f in fields(cls.Config):
        s = specs[f.name]
        if s is None or s.multiple_of or f.name in linked or tuple in _kinds(hints[f.name]):
            continue  # a multiple's bound need not be one; tuples are covered by their defaults
        for label, bound in (("min", s.ge), ("max", s.le)):
            if bound is not None:
                cases.append(pytest.param(name, f.name, _resolve(bound, defaults), id=f"{name}-{f.name}-{label}"))
        for c in s.choices or ():
            cases.append(pytest.param(name, f.name, c, id=f"{name}-{f.name}-{c}"))
    return cases


@pytest.mark.parametrize("method,option,value", [c for n, cls in METHODS.items() for c in _boundaries(n, cls)])
def test_declared_bounds_are_accepted(method, option, value):
    assert vars(make_config(METHODS.get(method), {option: value}))[option] == value


@pytest.mark.parametrize("name", METHODS.names())
def test_every_option_declares_its_range_and_defaults_pass(name):
    cls = METHODS.get(name)
    assert spec.undeclared(cls.Config) == [], f"{name}: declare these Config fields with opt(...)"
    spec.check(cls.Config(), name)
    spec.check(cls.paper_recipe, f"{name} paper recipe")
    make_config(cls, config_defaults(cls))  # every default, given explicitly


def test_every_recipe_field_is_declared():
    assert spec.undeclared(Recipe) == []


@pytest.mark.parametrize("name", METHODS.names())
def test_search_knobs_stay_inside_the_declarations(name):
    cls = METHODS.get(name)
    defaults = config_defaults(cls)
    for knob in method_knobs(cls):
        k = knob.around(defaults[knob.field])
        for value in k.choices if k.choices is not None else (k.low, k.high):
            make_config(cls, {knob.field: int(value) if k.integer else value})


@pytest.mark.parametrize("grid", [g for g in grid_names() if g != "quick-ablation"])  # that one: a composite
def test_ablation_cells_stay_inside_the_declarations(grid):
    for cell in build_one(grid, SCALES["smoke"]).cells:
        make_config(METHODS.get(cell.method), cell.config.method_args)


@pytest.mark.parametrize("suite", SUITES.names())
def test_suites_stay_inside_the_declarations(suite):
    for c in SUITES.get(suite)():
        make_config(METHODS.get(c.method), c.method_args)


@pytest.mark.parametrize("method,args", [("kmeans-features", {"patch_size": 9}), ("mae", {"mask_ratio": 0.99})])
def test_options_that_depend_on_the_data_are_refused_when_built(method, args):
    """Valid in general, impossible on 8-pixel images: refused when the method meets the data, before training."""
    cls = METHODS.get(method)
    with pytest.raises(UsageError) as err:
        cls(Context(in_channels=1, image_size=8, num_classes=3, num_train=60), make_config(cls, args))
    assert "\n" not in str(err.value) and next(iter(args)) in str(err.value)


# --------------------------------------------------------------------------- through the CLI

TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "", "--no-progress"]
CLI_CASES = [
    ("simclr", "temperature=nan"), ("simclr", "temperature=NaN"), ("simclr", "temperature=Infinity"),
    ("simclr", "temperature=-Infinity"), ("simclr", "temperature=1e999"), ("simclr", "temperature=0"),
    ("simclr", "hidden_dim=-5"), ("simclr", "hidden_dim=0"), ("simclr", "out_dim=100000000"), ("simclr", "head=weird"),
    ("simclr", "hidden_dim=" + "9" * 5000), ("simclr", "blur_p=[NaN]"),
    ("moco-v1", "queue_size=-1"), ("moco-v1", "blur_p=[0.5]"), ("moco-v2", "momentum=1.5"),
    ("moco-v2", "temperature=nan"), ("moco-v3", "temperature=hot"), ("moco-v3", "head_layers=0"),
    ("byol", "momentum=1.5"), ("byol", "hidden_dim=null"), ("byol", "solarize_p=[0.0, 2.0]"),
    ("dino", "out_dim=100000000"), ("dino", "teacher_temp=0"), ("dino", "center_momentum=-Infinity"),
    ("dino", "local_scale=[0.05]"), ("swav", "prototypes=0"), ("swav", "queue_length=-1"), ("swav", "epsilon=NaN"),
    ("barlowtwins", "lambd=-1"), ("vicreg", "sim_coeff=Infinity"), ("instdisc", "loss=weird"),
    ("instdisc", "noise_samples=0"), ("mae", "mask_ratio=1"), ("mae", "decoder_heads=3"), ("mae", "pool=weird"),
    ("clip", "text_heads=3"), ("clip", "max_len=0"), ("clip", "fallback_template={x}"), ("clip", "embed_dim=1e999"),
    ("kmeans-features", "num_centroids=0"), ("kmeans-features", "patch_size=0"), ("kmeans-features", "zca_eps=NaN"),
    ("autoencoder", "noise=weird"), ("autoencoder", "decoder_width=1"), ("supervised", "label_smoothing=2"),
    ("simsiam", "projector_layers=0"),
]


@pytest.fixture
def no_data(monkeypatch):
    """Loading data means validation let the run through: fail at once instead of training."""
    def refuse(*a, **k):
        raise AssertionError("validation let the run reach data loading")

    monkeypatch.setattr(bench.runner, "load_dataset", refuse)


@pytest.mark.parametrize("method,arg", CLI_CASES, ids=[f"{m}-{a[:40]}" for m, a in CLI_CASES])
def test_cli_refuses_hostile_method_arg(cli, tmp_path, no_data, method, arg):
    out = tmp_path / "out"
    code, stdout, err = cli("run", "--method", method, *TINY, "--method-arg", arg, "--out", out)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("repbench: error: ") and "Traceback" not in err
    assert arg.partition("=")[0] in err or "--method-arg" in err
    assert not out.exists()


# --------------------------------------------------------------------------- JSON values and records


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[1e999, 0.1]", '{"x": NaN}',
                                  "9" * 5000])
def test_method_arg_values_must_be_finite(text):
    with pytest.raises(UsageError) as err:
        parse_method_args([f"temperature={text}"])
    assert "\n" not in str(err.value) and "temperature" in str(err.value)


@pytest.mark.parametrize("text,value", [("0.2", 0.2), ("mlp", "mlp"), ("[1.0, 0.1]", [1.0, 0.1]), ("null", None),
                                        ("true", True), ("nan", "nan")])
def test_method_arg_values_still_parse(text, value):
    assert parse_method_args([f"k={text}"]) == {"k": value}


def _record_with(path: str, value: Any) -> dict[str, Any]:
    """A record's config with one value replaced, written and read back as JSON text (NaN/Infinity literals)."""
    d = json.loads(json.dumps(RunConfig(method="simclr", dataset="digits").to_dict()))
    *parents, leaf = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return json.loads(json.dumps(d))


RECORD_CASES = [
    ("recipe.lr", NAN), ("recipe.lr", INF), ("recipe.lr", -INF), ("recipe.lr", -1.0), ("recipe.lr", 0.0),
    ("recipe.lr", "fast"), ("recipe.lr", None), ("recipe.weight_decay", -1.0), ("recipe.weight_decay", INF),
    ("recipe.momentum", 1.5), ("recipe.betas", [0.9, 1.5]), ("recipe.betas", [0.9]), ("recipe.betas", ["a", "b"]),
    ("recipe.schedule", "weird"), ("recipe.optimizer", "adam"), ("recipe.milestones", [0.5, NAN]),
    ("recipe.warmup_epochs", -1.0), ("recipe.clip_grad", NAN), ("recipe.final_weight_decay", INF),
    ("method_args.temperature", NAN), ("method_args.temperature", INF), ("method_args.blur_p", [INF, 0.0]),
    ("backbone_args.widths", [INF]), ("epochs", 0), ("epochs", "two"), ("epochs", 2.5), ("epochs", INF),
    ("batch_size", 1), ("seed", -1), ("seed", NAN), ("per_class", 0), ("test_per_class", -3),
    ("deterministic", "yes"), ("amp", 1), ("method", 5), ("dataset", None),
]


@pytest.mark.parametrize("path,value", RECORD_CASES, ids=[f"{p}={v!r}" for p, v in RECORD_CASES])
def test_hostile_record_config_is_one_clear_line(path, value):
    with pytest.raises(UsageError) as err:
        RunConfig.from_dict(_record_with(path, value), "runs/x/record.json")
    msg = str(err.value)
    assert "\n" not in msg and "runs/x/record.json" in msg and path.rpartition(".")[2] in msg, msg


def test_a_valid_record_loads_back():
    cfg = RunConfig(method="simclr", dataset="digits", method_args={"temperature": 0.2}, per_class=10)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())), "r.json") == cfg


@pytest.mark.parametrize("field_name,value", [("method_args", {"temperature": NAN}),
                                              ("method_args", {"blur_p": (0.5, -INF)}),
                                              ("backbone_args", {"widths": (8, INF)})])
def test_run_config_refuses_non_finite_numbers(field_name, value):
    with pytest.raises(UsageError) as err:
        RunConfig(method="simclr", dataset="digits", **{field_name: value})
    assert "\n" not in str(err.value) and "finite" in str(err.value)
