"""`repbench run --preset NAME | --config FILE [--set KEY=VALUE ...]`: a run from a published configuration's data file."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench import presets
from bench.commands.values import parse_pairs
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data.roots import image_size

# Run flags that replace a preset's field of the same name; the rest (--seed, --device, ...) apply as always.
FIELD_FLAGS = ("method", "dataset", "backbone", "epochs", "batch_size")
RECIPE_FLAGS = ("lr", "weight_decay", "optimizer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="run a published configuration (see 'repbench list presets'; default none)")
    p.add_argument("--config", metavar="FILE", help="run the configuration a TOML file of the presets' form describes, e.g. from "
                        "'repbench config --run DIR' (default none)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field: epochs=1, recipe.lr=0.5, method_args.temperature=0.2 "
                        "(repeatable; default none)")


def wanted(a: argparse.Namespace) -> bool:
    if a.set and not (a.preset or a.config):
        raise UsageError("--set overrides a preset's field; give --preset NAME or --config FILE with it")
    return bool(a.preset or a.config)


def preset_config(a: argparse.Namespace) -> RunConfig:
    """The preset's config, then --set overrides, then the run flags given, each checked by RunConfig."""
    if a.preset and a.config:
        raise UsageError("give --preset NAME or --config FILE, not both")
    if a.suite or a.recipe:
        raise UsageError(f"--{'suite' if a.suite else 'recipe'} does not combine with a preset, which fixes its own "
                         "configuration; use --set KEY=VALUE to change one field")
    path = presets.path_of(a.preset) if a.preset else Path(a.config)
    name = f"preset:{a.preset}" if a.preset else f"config:{path.stem}"
    data = presets.read(path, user=bool(a.config))
    name = data.get("recipe_name", name)  # a file that pins a record's (repbench config --run)
    if not isinstance(name, str):
        raise UsageError(f"{path}: recipe_name = {name!r} should be a string, e.g. \"unified\"")
    pairs = parse_pairs(a.set, "--set")
    # Later entries win: a run flag over a --set of the same field.
    data = presets.override(data, pairs | {f: vars(a)[f] for f in FIELD_FLAGS if vars(a)[f] is not None}
                            | {f"recipe.{f}": vars(a)[f] for f in RECIPE_FLAGS if vars(a)[f] is not None}
                            | {f"method_args.{k}": v for k, v in parse_pairs(a.method_arg, "--method-arg").items()})
    changed = a.method_arg or any(vars(a)[f] is not None for f in RECIPE_FLAGS) or \
        any(k.startswith(("recipe.", "method_args.")) for k in pairs)
    cfg = presets.to_config(data, f"{name}+custom" if changed and not name.endswith("+custom") else name)
    size = a.image_size or cfg.image_size or image_size(0) or None
    given = {f: vars(a)[f] for f in ("seed", "per_class", "test_per_class") if vars(a)[f] is not None}
    return replace(cfg, device=a.device, deterministic=a.deterministic or cfg.deterministic, image_size=size, **given,
                   **monitor_flags(a))


def monitor_flags(a: argparse.Namespace) -> dict:
    """--knn-every and --online-linear where given: they replace a preset's (or suite's) values; they only measure."""
    return {**({"knn_every": a.knn_every} if a.knn_every is not None else {}),
            **({"online_linear": True} if a.online_linear else {})}
