"""`repbench config --run DIR`: the TOML file (the presets' form, for `repbench run --config FILE`) that reproduces
a finished record: the same config, so the same config key and run folder."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tomli_w

from bench import presets
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.runner import RECORD
from bench.store import read_json
from protocols import PROTOCOLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR",
                   help="a run folder holding record.json (results/runs/SUITE/RUN_ID), or the record.json itself; "
                        "required, no default")


def run(a: argparse.Namespace) -> int:
    print(config_text(Path(a.run)), end="")
    return 0


def config_text(run: Path) -> str:
    path = run if run.is_file() else run / RECORD
    if not path.is_file():
        raise UsageError(f"no {RECORD} in {run}; give a finished run's folder, e.g. results/runs/adhoc/RUN_ID")
    record = read_json(path)
    if not isinstance(record, dict):
        raise UsageError(f"{path} holds no run record; is it a repbench record.json?")
    cfg = RunConfig.from_dict(record.get("config", {}), str(path))
    try:
        body = tomli_w.dumps(as_file(cfg))
    except TypeError as err:  # a None (TOML has no null) or an object inside method_args or backbone_args
        raise UsageError(f"{path}: its config holds a value TOML cannot write ({err})") from None
    return (f"# Reproduces {path} (run {cfg.run_id()}): repbench run --config THIS_FILE\n"
            f"# Recorded on device {cfg.device!r}; the device is part of the config key, so run it with --device "
            f"{cfg.device} for the same key.\n{body}")


def as_file(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` in the presets' form, every field written out; TOML has no null, so fields that are None are left out
    (they read back as None)."""
    d = cfg.to_dict()
    top = {k: d[k] for k in ("method", "dataset", "backbone", "epochs", "batch_size")}
    top["protocols"] = list(cfg.protocols) if cfg.protocols is not None else PROTOCOLS.names()
    top |= {k: d[k] for k in (*presets.TOP_OPTIONAL, *presets.RUN_OPTIONAL) if d[k] is not None and k != "protocol_args"}
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.recipe).items() if v is not None}
    tables = {"recipe": recipe, "method_args": d["method_args"], "backbone_args": d["backbone_args"]}
    return top | tables | ({"protocol_args": d["protocol_args"]} if d["protocol_args"] else {})
