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
DEFAULT_COLUMNS = ("knn.top1", "knn_k200.top1", "linear.top1", "kmeans.nmi", "kmeans.acc", "fewshot*.top1",
                   "zero-shot*.top1", "reconstruction*.mse")
GROUP = ["suite", "dataset", "backbone", "method", "variant", "recipe", "epochs", "train_n"]


def load_records(runs: Path) -> list[dict]:
    runs = Path(runs)
    if not runs.exists():
        raise UsageError(f"no results directory {runs}; run 'repbench run ...' first or pass --runs DIR")
    records = []
    for path in sorted(runs.rglob("record.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"cannot read {path}: {err}; delete or rerun that run") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict) or "metrics" not in rec:
            raise UsageError(f"{path} is not a repbench record (no config/metrics); delete it or move it out of --runs")
        records.append(rec)
    if not records:
        raise UsageError(f"no record.json under {runs}; run 'repbench run ...' first or pass --runs DIR")
    return records


def flatten(records: list[dict], columns: tuple[str, ...] = DEFAULT_COLUMNS) -> pd.DataFrame:
    rows = []
    for r in records:
        c = r["config"]
        row = {"suite": c["suite"], "dataset": c["dataset"], "backbone": c["backbone"], "method": c["method"],
               "variant": ",".join(f"{k}={v}" for k, v in sorted(c.get("method_args", {}).items())) or "-",
               "recipe": c.get("recipe_name", "unified"), "epochs": c.get("epochs"),
               "train_n": r.get("data", {}).get("train"), "seed": c["seed"], "status": r.get("status", "ok"),
               "train_s": r.get("timing", {}).get("train_s"),
               "img_per_s": r.get("throughput", {}).get("images_per_s")}
        for key, entry in r.get("metrics", {}).items():
            for col in columns:
                kpat, field = col.rsplit(".", 1)
                if fnmatch.fnmatch(key, kpat) and isinstance(entry, dict) and field in entry:
                    row[f"{key}.{field}"] = entry[field]
        rows.append(row)
    return pd.DataFrame(rows)


def ci95(values: pd.Series) -> float:
    v = values.dropna()
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, dataset, backbone, method, recipe): n seeds, mean and 95% t-interval per metric."""
    metric_cols = [c for c in df.columns if "." in c]
    out = []
    for keys, g in df.groupby(GROUP, sort=True, dropna=False):
        row = dict(zip(GROUP, keys, strict=True))
        row["seeds"] = len(g)
        bad = g[g["status"] != "ok"]["status"]
        row["flags"] = ", ".join(f"{n}x {s}" for s, n in bad.value_counts().items()) if len(bad) else ""
        for c in metric_cols + ["train_s"]:
            vals = pd.to_numeric(g[c], errors="coerce") if c in g else pd.Series(dtype=float)
            row[f"{c}.mean"] = vals.mean()
            row[f"{c}.ci95"] = ci95(vals)
        out.append(row)
    return pd.DataFrame(out)


def _fmt(mean: float, ci: float, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(ci, float) and not math.isnan(ci):
        return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


def markdown(agg: pd.DataFrame) -> str:
    metric_cols = sorted({c.rsplit(".", 1)[0] for c in agg.columns if c.endswith(".mean")} - {"train_s"},
                         key=_column_order)
    cols = ["method", "variant", "backbone", "dataset", "recipe", "epochs", "train_n", "seeds"]
    # Columns that are the same on every row say nothing; keep the table narrow.
    shown = pd.DataFrame({k: agg[k] for k in cols if k in ("method", "seeds") or agg[k].nunique(dropna=False) > 1})
    for c in metric_cols:
        pct = not c.endswith(".mse")
        shown[c + (" %" if pct else "")] = [_fmt(m, e, 100 if pct else 1, 1 if pct else 4)
                                            for m, e in zip(agg[c + ".mean"], agg[c + ".ci95"], strict=True)]
    shown["train s"] = [_fmt(m, math.nan, 1, 1) for m in agg["train_s.mean"]]
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
    agg = aggregate(flatten(records if records is not None else load_records(runs), columns))
    common = {k: agg[k].iloc[0] for k in ("backbone", "dataset", "recipe", "epochs", "train_n") if agg[k].nunique() == 1}
    setting = ", ".join(f"{k} {v}" for k, v in common.items())
    text = f"Mean ± 95% CI (t-interval) over seeds; {setting}.\n\n" + markdown(agg) + "\n"
    md, csv = Path(out) / "table.md", Path(out) / "table.csv"
    atomic_write_bytes(md, text.encode())
    atomic_write_bytes(csv, agg.to_csv(index=False).encode())
    return text, md, csv
