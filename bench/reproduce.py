"""Reproduce a published table: its rows' presets x seeds -> ``run_many`` (records reused) -> published vs ours.

A table is a TOML data file, ``bench/presets/tables/NAME.toml`` (``repbench list tables``), with these keys
and no others::

    title = "lightly CIFAR-10 benchmark: kNN accuracy, ResNet-18 (CIFAR stem), 200 epochs, batch 128"
    source = "repository, file and commit (or paper and table number) the numbers are read from"
    notes = "optional: how the source measured, what differs"
    presets = ["lightly-cifar10-barlowtwins-e200-b128", "lightly-cifar10-byol-e200-b128"]  # rows, in order

Each row is a preset (``bench/presets/NAME.toml``); its ``[published]`` table gives the number to compare with:
``metric``, a dotted path into a record's ``metrics`` (``knn_k200.top1``, ``monitor_knn.best``,
``online_linear.last``), and ``value``, a fraction. A table adds only order, a title and its source, so every
number lives in one file. Rows of one table share the dataset and the published metric
(``tests/test_reproduce.py`` checks every shipped table); a row whose records lack its metric shows "missing".
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench import presets
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data.roots import image_size
from bench.presets.catalog import TABLE_DIR, table_names
from bench.report import ci95
from bench.runner import Options, run_many, validate
from bench.store import atomic_write_bytes

TABLE_KEYS = ("title", "source", "presets")
TABLE_OPTIONAL = ("notes",)
NOT_SCORED = ("diverged", "error")  # no trained model to score; counted in n's denominator, never in its mean
PAIRED = ("last", "best")  # a monitor's entry: both are shown, the published one first


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    notes: str
    presets: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """What to run: the table's rows (optionally only ``methods``) x ``seeds``, epochs x ``scale``."""

    table: str
    methods: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: float = 1.0
    device: str = "cpu"
    per_class: int | None = None
    test_per_class: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE, applied to every row


@dataclass(frozen=True)
class Row:
    preset: str
    published: dict[str, Any]
    configs: tuple[RunConfig, ...]  # one per seed


def read_table(name: str) -> Table:
    """The checked table file ``name``; one line naming the file and the key when it is malformed."""
    names = table_names(TABLE_DIR)  # this module's TABLE_DIR, which a test may point elsewhere
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"unknown table {name!r}; {hint}see 'repbench list tables'")
    path = TABLE_DIR / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read table file {path} ({err}); see bench/reproduce.py for the form") from None
    return _checked(data, path, name)


def _checked(data: dict[str, Any], path: Path, name: str) -> Table:
    unknown = sorted(set(data) - set(TABLE_KEYS + TABLE_OPTIONAL))
    missing = [k for k in TABLE_KEYS if k not in data]
    if unknown or missing:
        what = f"unknown key {unknown[0]}" if unknown else f"missing key {missing[0]}"
        raise UsageError(f"{path}: {what}; a table has {', '.join(TABLE_KEYS + TABLE_OPTIONAL)}")
    text = [k for k in ("title", "source", "notes") if not isinstance(data.get(k, ""), str)]
    if text:
        raise UsageError(f"{path}: {text[0]} should be text")
    rows = data["presets"]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows):
        raise UsageError(f"{path}: presets should be a non-empty list of preset names")
    if len(set(rows)) != len(rows):
        raise UsageError(f"{path}: preset {next(r for r in rows if rows.count(r) > 1)!r} is listed twice")
    known = presets.names()
    absent = [r for r in rows if r not in known]
    if absent:
        raise UsageError(f"{path}: unknown preset {absent[0]!r} in presets; see 'repbench list presets'")
    return Table(name, data["title"], data["source"], data.get("notes", ""), tuple(rows))


def scaled(cfg: RunConfig, scale: float) -> RunConfig:
    """Epochs x ``scale`` (at least 1); a per-epoch monitor's period capped so it still runs."""
    epochs = max(1, round(cfg.epochs * scale))
    return replace(cfg, epochs=epochs, knn_every=min(cfg.knn_every, epochs))


def plan(req: Request) -> tuple[Table, list[Row]]:
    """The table and its selected rows' configs, each validated: nothing is loaded or written yet."""
    table = read_table(req.table)
    data = {name: presets.read(presets.path_of(name)) for name in table.presets}
    if req.methods is not None:
        have = sorted({d["method"] for d in data.values()})
        wrong = [m for m in req.methods if m not in have]
        if wrong:
            raise UsageError(f"--methods: {wrong[0]!r} is not a method of table {table.name}; give some of {', '.join(have)}")
        data = {n: d for n, d in data.items() if d["method"] in req.methods}
    rows = [Row(name, d["published"], _configs(name, d, req)) for name, d in data.items()]
    for row in rows:
        for c in row.configs:
            validate(c)
    return table, rows


def _configs(name: str, data: dict[str, Any], req: Request) -> tuple[RunConfig, ...]:
    # Same naming as `repbench run --preset NAME --set ...`: a changed recipe or method option marks the recipe.
    changed = any(k.startswith(("recipe.", "method_args.")) for k in req.overrides)
    cfg = presets.to_config(presets.override(data, req.overrides), f"preset:{name}{'+custom' if changed else ''}")
    cfg = replace(scaled(cfg, req.scale), device=req.device, per_class=req.per_class, test_per_class=req.test_per_class,
                  image_size=cfg.image_size or image_size(0) or None, suite=f"reproduce-{req.table}")
    return tuple(replace(cfg, seed=s) for s in req.seeds)


def not_comparable(req: Request) -> list[str]:
    """Why this run's numbers cannot be set beside the published ones (empty: they can)."""
    why = [f"epochs x {req.scale:g} (--scale)"] if req.scale != 1 else []
    why += [f"--set {k}={v}" for k, v in req.overrides.items()]
    why += [f"--{f.replace('_', '-')} {v} (a subset)" for f, v in (("per_class", req.per_class),
                                                                   ("test_per_class", req.test_per_class)) if v]
    return why


def out_dir(req: Request, out: Path) -> Path:
    return Path(out) / "reproduce" / (req.table if req.scale == 1 else f"{req.table}-scale{req.scale:g}")


def reproduce(req: Request, out: Path, opts: Options, jobs: int = 1) -> tuple[str, Path, Path]:
    """Run (or read back) every cell, then write the side-by-side table; (Markdown text, .md path, .csv path)."""
    table, rows = plan(req)
    configs = [c for row in rows for c in row.configs]
    records = run_many(configs, out, replace(opts, reuse=True, keep_going=True), jobs=jobs)
    frame = pd.DataFrame([summarise(row, [records[c.run_id()] for c in row.configs]) for row in rows])
    text = header(table, req) + markdown(frame) + "\n"
    folder = out_dir(req, out)
    md, csv = folder / "table.md", folder / "table.csv"
    atomic_write_bytes(csv, frame.to_csv(index=False).encode())
    atomic_write_bytes(md, text.encode())
    return text, md, csv


def metric_value(metrics: dict[str, Any], path: str) -> float | None:
    """The finite number at dotted ``path`` in a record's metrics, else None (absent, skipped, not a number)."""
    value: Any = metrics
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def paired_path(records: list[dict[str, Any]], path: str) -> str | None:
    """For ``X.best`` (or ``X.last``) the other of the pair, when a record's entry X holds both."""
    parent, _, leaf = path.rpartition(".")
    if leaf not in PAIRED or not parent:
        return None
    other = PAIRED[1 - PAIRED.index(leaf)]
    has_both = any(all(metric_value(r.get("metrics", {}), f"{parent}.{k}") is not None for k in PAIRED) for r in records)
    return f"{parent}.{other}" if has_both else None


def _scores(records: list[dict[str, Any]], path: str) -> pd.Series:
    """One value per scored seed: runs that trained and hold the metric."""
    vals = [metric_value(r.get("metrics", {}), path) for r in records if r.get("status") not in NOT_SCORED]
    return pd.Series([v for v in vals if v is not None], dtype=float)


def summarise(row: Row, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: published, ours (mean, 95% t-interval, n scored of asked), difference, budget, hardware, time."""
    path, published = row.published["metric"], float(row.published["value"])
    ours = _scores(records, path)
    mean = ours.mean() if len(ours) else math.nan
    trained = [r for r in records if r.get("status") not in NOT_SCORED]
    out = {"preset": row.preset, "method": row.configs[0].method, "metric": path, "published": published,
           "mean": mean, "ci95": ci95(ours), "scored": len(ours), "asked": len(records),
           "diff_pts": 100 * (mean - published), "missing": bool(trained) and not len(ours),
           "epochs": row.configs[0].epochs, "hardware": _hardware(records), "wall_s": _wall_s(records),
           "flags": _flags(records, path)}
    other = paired_path(records, path)
    if other:
        vals = _scores(records, other)
        leaf = other.rpartition(".")[2]
        out |= {f"{leaf}.mean": vals.mean() if len(vals) else math.nan, f"{leaf}.ci95": ci95(vals),
                f"{leaf}.scored": len(vals)}
    return out


def _hardware(records: list[dict[str, Any]]) -> str:
    names = {r.get("provenance", {}).get("device_name") for r in records} - {None}
    return "; ".join(sorted(names)) or "-"


def _wall_s(records: list[dict[str, Any]]) -> float:
    """Mean seconds of training plus evaluation per seed, over the runs that have timings."""
    times = [t.get("train_s", 0) + t.get("eval_s", 0) for r in records if (t := r.get("timing"))]
    return sum(times) / len(times) if times else math.nan


def _flags(records: list[dict[str, Any]], path: str) -> str:
    counts = pd.Series([r.get("status", "ok") for r in records]).value_counts()
    flags = [f"{n}x {s}" for s, n in counts.items() if s != "ok"]
    lacking = sum(1 for r in records if r.get("status") not in NOT_SCORED and metric_value(r.get("metrics", {}), path) is None)
    return ", ".join(flags + ([f"{lacking}x no {path}"] if lacking else []))


def header(table: Table, req: Request) -> str:
    seeds = ",".join(map(str, req.seeds))
    lines = [f"# {table.title}", "", f"Published: {table.source}.", "",
             f"Ours: mean ± 95% t-interval half-width over the scored seeds (n = scored/asked; seeds {seeds}, "
             f"device {req.device}); difference = ours - published, in points; wall = train + eval seconds per seed."]
    why = not_comparable(req)
    if why:
        lines += ["", f"**Not comparable with the published numbers**: {'; '.join(why)}."]
    if table.notes:
        lines += ["", f"Notes: {table.notes}"]
    return "\n".join(lines) + "\n\n"


def _pct(mean: float, ci: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f}" if math.isnan(ci) else f"{100 * mean:.1f} ± {100 * ci:.1f}"


def markdown(frame: pd.DataFrame) -> str:
    shown = pd.DataFrame({"method": frame["method"], "published %": [f"{100 * v:.1f}" for v in frame["published"]]})
    shown["ours %"] = ["missing" if miss else _pct(m, c) for m, c, miss in zip(frame["mean"], frame["ci95"], frame["missing"],
                                                                               strict=True)]
    shown["n"] = [f"n={s}/{a}" for s, a in zip(frame["scored"], frame["asked"], strict=True)]
    shown["diff (pts)"] = ["-" if math.isnan(d) else f"{d:+.1f}" for d in frame["diff_pts"]]
    for leaf in PAIRED:
        if f"{leaf}.mean" in frame:
            shown[f"ours % ({leaf})"] = [_pct(m, c) for m, c in zip(frame[f"{leaf}.mean"].fillna(math.nan),
                                                                    frame[f"{leaf}.ci95"].fillna(math.nan), strict=True)]
    shown["epochs"] = frame["epochs"]
    shown["hardware"] = frame["hardware"]
    shown["wall s/seed"] = ["-" if math.isnan(w) else f"{w:.1f}" for w in frame["wall_s"]]
    shown["metric"] = frame["metric"]
    shown["flags"] = frame["flags"]
    return shown.to_markdown(index=False, disable_numparse=True)
