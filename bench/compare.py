"""`repbench compare A B`: paired differences between two sets of records, per config, metric and shared seed.

Matching. Each record's config is flattened to dotted fields (``recipe.lr``, ``method_args.temperature``; a field
a record lacks reads "-"); the seed is left out. A field with one value on every record of A and another single
value on every record of B is what the two sets differ in (``epochs`` 2 vs 4, ``method_args.temperature`` 0.1
vs "-"); every other field names the config (method, dataset, backbone, ...), and a config of A is paired with
the config of B of the same name. Within a pair, runs are paired by seed: A - B on each seed both sides scored,
the mean's 95% interval (bench/stats.py: Student's t, BCa from 10 pairs) and a verdict (resolved: the interval
excludes 0, else n.s.). Two sets with the same configs compare reruns (other code, another machine).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.errors import UsageError
from bench.report import DELTA, GROUP, flatten, load_checked, metric_columns
from bench.stats import difference, difference_text

SEEDLESS = ("seed",)
# Metrics read in points (x100); the others (mse, seconds) keep their unit.
RAW_UNITS = (".mse", "train_s")


@dataclass
class Comparison:
    a: Path
    b: Path
    differs: dict[str, tuple[str, str]]  # field -> (value in A, value in B)
    key_fields: list[str]  # the fields that name a config and vary across configs
    rows: pd.DataFrame  # config, key (the match key), metric, n, a_mean, b_mean, diff, lo, hi, kind, verdict
    unpaired: list[str]  # configs present in both sets with no shared seed


def config_fields(rec: dict) -> dict[str, str]:
    """The record's config as dotted fields, values as JSON text, without the seed."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):  # an empty one (no method_args) adds no field, as if absent
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value, sort_keys=True)

    walk("", {k: v for k, v in rec["config"].items() if k not in SEEDLESS})
    return out


def split_fields(a: list[dict[str, str]], b: list[dict[str, str]]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """(fields A and B differ in: field -> (A's value, B's value), fields that name a config)."""
    names = sorted({k for f in a + b for k in f})
    differs, key = {}, []
    for name in names:
        va, vb = {f.get(name, "-") for f in a}, {f.get(name, "-") for f in b}
        if len(va) == 1 and len(vb) == 1 and va != vb:
            differs[name] = (va.pop(), vb.pop())
        else:
            key.append(name)
    return differs, key


def _label(fields: dict[str, str], shown: list[str]) -> str:
    return ", ".join(fields.get(k, "-").strip('"') for k in shown) or "all"


def _indexed(df: pd.DataFrame, keys: list[str], side: str, folder: Path) -> dict[str, dict[int, int]]:
    """match key -> {seed: row of df}; two records of one config and seed is an error (which one to pair?)."""
    out: dict[str, dict[int, int]] = {}
    for i, (k, seed) in enumerate(zip(keys, df["seed"], strict=True)):
        seeds = out.setdefault(k, {})
        if int(seed) in seeds:
            raise UsageError(f"{side} ({folder}) holds two records of one config with seed {seed}; "
                             "keep one of them, or compare the folders they are in")
        seeds[int(seed)] = i
    return out


def _scores(df: pd.DataFrame, rows: dict[int, int], column: str) -> dict[int, float]:
    if column not in df:
        return {}
    vals = pd.to_numeric(df[column], errors="coerce")
    return {s: float(vals.iloc[i]) for s, i in rows.items() if math.isfinite(vals.iloc[i])}


def match(a_recs: list[dict], b_recs: list[dict]) -> tuple[dict[str, tuple[str, str]], list[str], list[str], list[str]]:
    """(what differs, config-naming fields, match key of each A record, of each B record)."""
    fa, fb = [config_fields(r) for r in a_recs], [config_fields(r) for r in b_recs]
    differs, key = split_fields(fa, fb)

    def keys(fields: list[dict[str, str]]) -> list[str]:
        return [json.dumps([f.get(k, "-") for k in key]) for f in fields]

    return differs, key, keys(fa), keys(fb)


def compare(a: Path, b: Path, columns: tuple[str, ...]) -> Comparison:
    a_recs, b_recs = load_checked(Path(a), columns, "another folder as A"), load_checked(Path(b), columns, "another folder as B")
    return compare_records(a_recs, b_recs, columns, Path(a), Path(b))


def compare_records(a_recs: list[dict], b_recs: list[dict], columns: tuple[str, ...], a: Path, b: Path) -> Comparison:
    differs, key, ka, kb = match(a_recs, b_recs)
    da, db = flatten(a_recs, columns), flatten(b_recs, columns)
    ia, ib = _indexed(da, ka, "A", a), _indexed(db, kb, "B", b)
    shared = [k for k in ia if k in ib]
    if not shared:
        raise UsageError(f"{a} and {b} share no config (their first records differ in {_first_mismatch(ka, kb, key)}); "
                         "compare sets that differ in one setting")
    fields = {k: dict(zip(key, json.loads(k), strict=True)) for k in shared}
    shown = [f for f in key if len({fields[k][f] for k in shared}) > 1]
    metrics = [c for c in metric_columns(da) + ["train_s"] if c in db]
    rows, unpaired = [], []
    for k in shared:
        if not ia[k].keys() & ib[k].keys():
            unpaired.append(_label(fields[k], shown))
            continue
        for m in metrics:
            sa, sb = _scores(da, ia[k], m), _scores(db, ib[k], m)
            if not sa.keys() & sb.keys():
                continue
            d = difference(sa, sb)
            rows.append({"config": _label(fields[k], shown), "key": k, "metric": m, "n": d.n,
                         "a_mean": sum(sa.values()) / len(sa), "b_mean": sum(sb.values()) / len(sb),
                         "diff": d.diff, "lo": d.lo, "hi": d.hi, "kind": d.kind, "verdict": d.verdict})
    if not rows:
        raise UsageError(f"{a} and {b} share {len(shared)} config(s) but no seed scored on both sides; "
                         "run the same --seeds in both")
    return Comparison(Path(a), Path(b), differs, shown, pd.DataFrame(rows), unpaired)


def _first_mismatch(ka: list[str], kb: list[str], key: list[str]) -> str:
    a, b = json.loads(ka[0]), json.loads(kb[0])
    diff = [f"{k} {x} vs {y}" for k, x, y in zip(key, a, b, strict=True) if x != y]
    return "; ".join(diff[:2]) or "no field"


def _value(metric: str, x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "-"
    sign = "+" if signed else ""
    return f"{x:{sign}.4g}" if metric.endswith(RAW_UNITS) else f"{100 * x:{sign}.1f}"


def delta_text(metric: str, diff: float, lo: float, hi: float, kind: str, verdict: str, n: int) -> str:
    """"+1.5 [+0.2, +2.7] resolved" (points, or the metric's unit); "+1.5 (n=1)" where one pair gives no interval."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-" if not math.isfinite(diff) else f"{_value(metric, diff, signed=True)} (n={n})"
    if not metric.endswith(RAW_UNITS):
        return difference_text(diff, lo, hi, kind, verdict)
    return f"{diff:+.4g} [{lo:+.4g}, {hi:+.4g}] {verdict}"


def markdown(c: Comparison) -> str:
    r = c.rows
    both = {k: v for k, v in c.differs.items() if "-" not in v}
    differs = "; ".join(f"{k} {va} (A) vs {vb} (B)" for k, (va, vb) in both.items()) or "nothing in the configs"
    one_side = sorted(set(c.differs) - set(both))
    if one_side:  # records of older or newer code: a field only one set writes
        differs += f" (fields only one set records: {', '.join(one_side)})"
    shown = pd.DataFrame({
        "config": r["config"], "metric": r["metric"], "n pairs": r["n"],
        "A": [_value(m, x) for m, x in zip(r["metric"], r["a_mean"], strict=True)],
        "B": [_value(m, x) for m, x in zip(r["metric"], r["b_mean"], strict=True)],
        "A - B, 95% CI, verdict": [delta_text(*t) for t in zip(r["metric"], r["diff"], r["lo"], r["hi"], r["kind"],
                                                               r["verdict"], r["n"], strict=True)]})
    head = [f"A: {c.a}; B: {c.b}; they differ in: {differs}.",
            f"Configs matched on every other config field (shown: {', '.join(c.key_fields) or 'one config'}); runs "
            "paired by seed. A - B per seed (points for accuracies and NMI), mean and 95% interval (t; BCa from 10 "
            "pairs); resolved: the interval excludes 0."]
    if c.unpaired:
        head.append(f"No shared seed, not compared: {', '.join(c.unpaired)}.")
    return "\n".join(head) + "\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"


def baseline_columns(agg: pd.DataFrame, records: list[dict], base: list[dict], columns: tuple[str, ...],
                     metrics: list[str], base_dir: Path) -> pd.DataFrame:
    """``agg`` (bench/report.py's aggregate of ``records``) with a "Δ METRIC" column per metric: the paired
    difference to the matching config of ``base`` (``compare``'s matching), "-" where none matches."""
    comp = compare_records(records, base, columns, Path("."), base_dir)
    _, _, ka, _ = match(records, base)
    df = flatten(records, columns).assign(_key=ka)
    # aggregate's rows are these groups in this order; a row mixing configs (same table group) gets no delta.
    keys = [g["_key"].iloc[0] if g["_key"].nunique() == 1 else None for _, g in df.groupby(GROUP, sort=True, dropna=False)]
    by = comp.rows.set_index(["key", "metric"])
    out = agg.copy()
    for m in metrics:
        rows = [by.loc[(k, m)] if (k, m) in by.index else None for k in keys]
        out[f"{DELTA}{m}"] = ["-" if r is None else delta_text(m, *r[["diff", "lo", "hi", "kind", "verdict", "n"]])
                              for r in rows]
    return out
