"""Records -> pandas -> tables aggregated over seeds (mean and 95% CI), as Markdown and CSV."""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from bench.core.errors import UsageError
from bench.store import atomic_write_bytes

# (result key pattern, value field) pairs shown by default; fnmatch patterns on the key.
DEFAULT_COLUMNS = ("knn.top1", "knn_k200.top1", "knn_k200_t0.1.top1", "monitor_knn.last", "monitor_knn.best",
                   "linear.top1", "online_linear.last", "online_linear.best", "kmeans.nmi", "kmeans.acc", "fewshot*.top1",
                   "zero-shot*.top1", "reconstruction*.mse")
GROUP = ["suite", "dataset", "backbone", "method", "variant", "recipe", "epochs", "train_n"]
# Every method is paired with the untrained encoder of its own backbone (MAE's ViT with a random ViT) on the same
# seed, data and subset; the floor's budget is not matched since an untrained encoder is the same at any budget.
FLOOR = "random"
VS_FLOOR = ("knn.top1", "linear.top1")
PAIR_ON = ["suite", "dataset", "backbone", "train_n", "seed"]
VS_COLUMN = "vs random init"


def load_records(runs: Path) -> list[dict]:
    return [rec for _, rec in _load(runs)]


def _load(runs: Path) -> list[tuple[Path, dict]]:
    """(path, record) of every record.json under ``runs``; the first unreadable or malformed one is a UsageError."""
    runs = Path(runs)
    if not runs.exists():
        raise UsageError(f"no results directory {runs}; run 'repbench run ...' first or pass --runs DIR")
    records = []
    for path in sorted(runs.rglob("record.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise UsageError(f"cannot read {path}: {err}; delete or rerun that run") from None
        problem = record_problem(rec)
        if problem:
            raise UsageError(f"{path} is not a repbench record ({problem}); delete it or move it out of --runs")
        records.append((path, rec))
    if not records:
        raise UsageError(f"no record.json under {runs}; run 'repbench run ...' first or pass --runs DIR")
    return records


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {type(None): "null", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MISSING = object()
# (where, key, default (MISSING: required), test) for every field that flatten() reads.
RECORD_FIELDS = [("config", k, MISSING, _is_text) for k in ("suite", "dataset", "backbone", "method")] + [
    ("config", "seed", MISSING, _is_int), ("config", "epochs", None, lambda v: v is None or _is_int(v)),
    ("config", "method_args", {}, _is_object), ("config", "recipe_name", "", _is_text), ("", "status", "ok", _is_text),
    ("", "metrics", MISSING, _is_object), ("", "data", {}, _is_object), ("", "timing", {}, _is_object),
    ("", "throughput", {}, _is_object)]


def record_problem(rec: object) -> str | None:
    """What keeps ``rec`` from being a row of a table (one phrase), or None when it has a record's shape."""
    if not isinstance(rec, dict):
        return f"the file holds {_json_type(rec)}, not an object"
    if not isinstance(rec.get("config"), dict):
        return "no config" if "config" not in rec else f"config is {_json_type(rec['config'])}, not an object"
    for where, key, default, ok in RECORD_FIELDS:
        value = (rec[where] if where else rec).get(key, default)
        name = f"{where}.{key}".lstrip(".")
        if value is MISSING:
            return f"no {name}"
        if not ok(value):
            return f"{name} is {_json_type(value)}"
    bad = next((k for k, entry in rec["metrics"].items() if not isinstance(entry, dict)), None)
    return None if bad is None else f"metrics.{bad} is {_json_type(rec['metrics'][bad])}, not an object"


def _check_columns(path: Path, rec: dict, columns: tuple[str, ...]) -> None:
    """Every value the table would average is a number (or null)."""
    for key, entry in rec["metrics"].items():
        for col in columns:
            kpat, field = col.rsplit(".", 1)
            value = entry.get(field)
            if value is not None and not _is_number(value) and fnmatch.fnmatch(key, kpat):
                raise UsageError(f"{path} is not a repbench record (metrics.{key}.{field} is {_json_type(value)}, "
                                 "not a number); delete it or move it out of --runs")


def flatten(records: list[dict], columns: tuple[str, ...] = DEFAULT_COLUMNS) -> pd.DataFrame:
    rows = []
    for r in records:
        c = r["config"]
        row = {"suite": c["suite"], "dataset": c["dataset"], "backbone": c["backbone"], "method": c["method"],
               "variant": ",".join(f"{k}={v}" for k, v in sorted(c.get("method_args", {}).items())) or "-",
               "recipe": c.get("recipe_name", "unified"), "epochs": c.get("epochs"),
               "train_n": r.get("data", {}).get("train"), "seed": c["seed"], "status": r.get("status", "ok"),
               "flag": _flag(r),
               "train_s": r.get("timing", {}).get("train_s"),
               "img_per_s": r.get("throughput", {}).get("images_per_s")}
        for key, entry in r.get("metrics", {}).items():
            for col in columns:
                kpat, field = col.rsplit(".", 1)
                if fnmatch.fnmatch(key, kpat) and isinstance(entry, dict) and field in entry:
                    row[f"{key}.{field}"] = entry[field]
        rows.append(row)
    return pd.DataFrame(rows)


def _flag(rec: dict) -> str:
    """The record's status, with the collapse watchdog's kind of collapse: "collapsed (uniform)"."""
    status = rec.get("status", "ok")
    detail = rec.get("training", {}).get("status_detail") if isinstance(rec.get("training"), dict) else None
    reason = detail.get("reason") if isinstance(detail, dict) else None
    return f"{status} ({reason.split(':')[0]})" if status == "collapsed" and isinstance(reason, str) else status


def ci95(values: pd.Series) -> float:
    v = values.dropna()
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, dataset, backbone, method, recipe): n seeds, mean and 95% t-interval per metric, and
    the paired difference to the random-init floor (``VS_COLUMN``) where the records hold one."""
    metric_cols = [c for c in df.columns if "." in c]
    floors = _floors(df)
    out = []
    for keys, g in df.groupby(GROUP, sort=True, dropna=False):
        row = dict(zip(GROUP, keys, strict=True))
        row["seeds"] = len(g)
        bad = g[g["status"] != "ok"]["flag"]
        row["flags"] = ", ".join(f"{n}x {s}" for s, n in bad.value_counts().items()) if len(bad) else ""
        for c in metric_cols + ["train_s"]:
            vals = pd.to_numeric(g[c], errors="coerce") if c in g else pd.Series(dtype=float)
            row[f"{c}.mean"] = vals.mean()
            row[f"{c}.ci95"] = ci95(vals)
        if floors is not None and row["method"] != FLOOR:
            row.update(vs_floor(g, floors))
        out.append(row)
    return pd.DataFrame(out)


def _floors(df: pd.DataFrame) -> pd.DataFrame | None:
    """The random-init records' values, one row per PAIR_ON key; None when there are none."""
    cols = [c for c in VS_FLOOR if c in df]
    floor = df[(df["method"] == FLOOR) & (df["status"] == "ok")]
    if floor.empty or not cols:
        return None
    return floor.drop_duplicates(PAIR_ON).set_index(PAIR_ON)[cols]


def vs_floor(g: pd.DataFrame, floors: pd.DataFrame) -> dict[str, object]:
    """Paired gain of one group's seeds over the floor of the same seed (points): per metric the mean, 95%
    t-interval (bench/report.py's ci95) and n scored, and the ``VS_COLUMN`` text, "yes" when every run was
    scored and every interval lies above zero. A group without any paired floor gets nothing."""
    keys = [tuple(k) for k in g[PAIR_ON].itertuples(index=False)]
    if not any(k in floors.index for k in keys):
        return {}
    out: dict[str, object] = {}
    parts, above = [], True
    for c in VS_FLOOR:
        base = pd.Series([floors[c].get(k, math.nan) if c in floors else math.nan for k in keys], index=g.index)
        diff = 100 * (pd.to_numeric(g[c], errors="coerce") - base) if c in g else pd.Series(math.nan, index=g.index)
        mean, half, n = diff.mean(), ci95(diff), int(diff.notna().sum())
        lo, hi = mean - half, mean + half
        out |= {f"vs_random.{c}.gain": mean, f"vs_random.{c}.lo": lo, f"vs_random.{c}.hi": hi, f"vs_random.{c}.n": n}
        scored = "" if n == len(g) else f" ({n}/{len(g)} scored)"
        interval = f" [{lo:+.1f}, {hi:+.1f}]" if not math.isnan(half) else ""
        parts.append(f"{c.split('.')[0]} {mean:+.1f}{interval}{scored}" if n else f"{c.split('.')[0]} -")
        above = above and n == len(g) and not math.isnan(lo) and lo > 0
    out[VS_COLUMN] = ", ".join(parts) + (": yes" if above else ": no")
    return out


def _fmt(mean: float, ci: float, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(ci, float) and not math.isnan(ci):
        return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


def markdown(agg: pd.DataFrame) -> str:
    metric_cols = sorted({c.rsplit(".", 1)[0] for c in agg.columns if c.endswith(".mean")} - {"train_s"},
                         key=_column_order)
    cols = ["suite", "method", "variant", "backbone", "dataset", "recipe", "epochs", "train_n", "seeds"]
    # Columns that are the same on every row say nothing; keep the table narrow.
    shown = pd.DataFrame({k: agg[k] for k in cols if k in ("method", "seeds") or agg[k].nunique(dropna=False) > 1})
    for c in metric_cols:
        pct = not c.endswith(".mse")
        shown[c + (" %" if pct else "")] = [_fmt(m, e, 100 if pct else 1, 1 if pct else 4)
                                            for m, e in zip(agg[c + ".mean"], agg[c + ".ci95"], strict=True)]
    shown["train s"] = [_fmt(m, math.nan, 1, 1) for m in agg["train_s.mean"]]
    if VS_COLUMN in agg:
        shown[VS_COLUMN] = agg[VS_COLUMN].fillna("-")
    shown["flags"] = agg["flags"]
    return shown.to_markdown(index=False)


def _column_order(col: str) -> tuple[int, str]:
    for i, pat in enumerate(DEFAULT_COLUMNS):
        kpat, field = pat.rsplit(".", 1)
        key, f = col.rsplit(".", 1)
        if fnmatch.fnmatch(key, kpat) and f == field:
            return i, col
    return len(DEFAULT_COLUMNS), col


def write_table(runs: Path, out: Path, columns: tuple[str, ...] = DEFAULT_COLUMNS,
                records: list[dict] | None = None) -> tuple[str, Path, Path]:
    """Aggregate ``records`` (default: every record.json under ``runs``) into out/table.md and out/table.csv."""
    if records is None:
        loaded = _load(runs)
        for path, rec in loaded:
            _check_columns(path, rec, columns)
        records = [rec for _, rec in loaded]
    agg = aggregate(flatten(records, columns))
    common = {k: agg[k].iloc[0] for k in ("backbone", "dataset", "recipe", "epochs", "train_n") if agg[k].nunique() == 1}
    setting = ", ".join(f"{k} {v}" for k, v in common.items())
    text = f"Mean ± 95% CI (t-interval) over seeds; {setting}.\n\n" + markdown(agg) + "\n"
    md, csv = Path(out) / "table.md", Path(out) / "table.csv"
    atomic_write_bytes(md, text.encode())
    atomic_write_bytes(csv, agg.to_csv(index=False).encode())
    return text, md, csv
