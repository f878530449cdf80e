"""Records -> pandas -> tables aggregated over seeds (mean and 95% CI), as Markdown and CSV."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import pandas as pd
from scipy import stats

# _load and load_records are read from here by the site builder and scripts.
from bench.records import _load as _load
from bench.records import load_checked
from bench.records import load_records as load_records
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
            row[f"{c}.n"] = int(vals.notna().sum())
        # A run is scored when any metric has a value (a diverged one has none): "1/3" beside a one-seed mean.
        row["scored"] = max([row[f"{c}.n"] for c in metric_cols] or [0])
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


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The KEY.FIELD metric columns of ``flatten``'s frame, in the table's order."""
    return sorted((c for c in df.columns if "." in c), key=_column_order)


# The terminal's default table (--wide: every column): these metrics, the runs scored, train time and the flags
# fit in WIDTH characters; the paired gain over random init stays in table.md and --wide.
NARROW = {"knn.top1": "kNN %", "linear.top1": "linear %", "kmeans.nmi": "NMI %"}
WIDTH = 120
# The encoder a method's features come from, where it is not the trained backbone: raw pixels and K-Means
# features use none ("-"), the random-init floor the untrained backbone.
ENCODER = {"raw": "-", "kmeans-features": "-", "random": "random {}"}
DELTA = "Δ "  # columns added by 'repbench table --baseline' (bench/compare.py)


def _fmt(mean: float, ci: float, scale: float, digits: int, pm: str = " ± ") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(ci, float) and not math.isnan(ci):
        return f"{mean * scale:.{digits}f}{pm}{ci * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


def _cells(agg: pd.DataFrame, c: str, pm: str) -> list[str]:
    """Mean ± CI of one metric per row; "(n=k)" where fewer runs scored it than scored the row's other metrics."""
    pct = not c.endswith(".mse")
    n = agg[c + ".n"] if c + ".n" in agg else agg["scored"]
    return [_fmt(m, e, 100 if pct else 1, 1 if pct else 4, pm) + (f" (n={k})" if 0 < k < s else "")
            for m, e, k, s in zip(agg[c + ".mean"], agg[c + ".ci95"], n, agg["scored"], strict=True)]


def markdown(agg: pd.DataFrame, wide: bool = True) -> str:
    """The table as Markdown: every metric column (``wide``), or the terminal's NARROW one fitted to WIDTH."""
    metric_cols = sorted({c.rsplit(".", 1)[0] for c in agg.columns if c.endswith(".mean")} - {"train_s"},
                         key=_column_order)
    metric_cols = metric_cols if wide else [c for c in metric_cols if c in NARROW]
    agg = agg.assign(backbone=[ENCODER.get(m, "{}").format(b) for m, b in zip(agg["method"], agg["backbone"], strict=True)])
    if "scored" not in agg:
        agg = agg.assign(scored=agg["seeds"])
    cols = ["suite", "method", "variant", "backbone", "dataset", "recipe", "epochs", "train_n"]
    # Columns that are the same on every row say nothing; keep the table narrow.
    shown = pd.DataFrame({k: agg[k] for k in cols if k == "method" or agg[k].nunique(dropna=False) > 1})
    shown["seeds"] = [f"{n}/{s}" for n, s in zip(agg["scored"], agg["seeds"], strict=True)]
    for c in metric_cols:
        label = c + (" %" if not c.endswith(".mse") else "") if wide else NARROW[c]
        shown[label] = _cells(agg, c, " ± " if wide else "±")  # the terminal's spaces go to the flags
    for c in (c for c in agg.columns if c.startswith(DELTA) and (wide or c[len(DELTA):] in NARROW)):
        shown[c] = agg[c]
    shown["train s"] = [_fmt(m, math.nan, 1, 1) for m in agg["train_s.mean"]]
    if VS_COLUMN in agg and wide:
        shown[VS_COLUMN] = agg[VS_COLUMN].fillna("-")
    shown["flags"] = agg["flags"]
    return shown.to_markdown(index=False) if wide else _fit(shown)


def _fit(shown: pd.DataFrame) -> str:
    """Markdown of ``shown`` with its free-text cells (variant, flags) cut with "…" until lines fit WIDTH."""
    text = shown.to_markdown(index=False)
    cuttable = sum(max(0, int(shown[c].astype(str).str.len().max()) - 8) for c in ("variant", "flags") if c in shown)
    if max(map(len, text.splitlines())) - WIDTH > cuttable:  # too wide anyway (e.g. --baseline's columns)
        return text
    for col in ("variant", "flags"):
        excess = max(map(len, text.splitlines())) - WIDTH
        if excess <= 0 or col not in shown:
            continue
        keep = max(8, int(shown[col].astype(str).str.len().max()) - excess - 1)
        shown[col] = [s if len(s) <= keep + 1 else s[:keep] + "…" for s in shown[col].astype(str)]
        text = shown.to_markdown(index=False)
    return text


def _column_order(col: str) -> tuple[int, str]:
    for i, pat in enumerate(DEFAULT_COLUMNS):
        kpat, field = pat.rsplit(".", 1)
        key, f = col.rsplit(".", 1)
        if fnmatch.fnmatch(key, kpat) and f == field:
            return i, col
    return len(DEFAULT_COLUMNS), col


def write_table(runs: Path, out: Path, columns: tuple[str, ...] = DEFAULT_COLUMNS,
                records: list[dict] | None = None, wide: bool = False) -> tuple[str, Path, Path]:
    """Aggregate ``records`` (default: every record.json under ``runs``) into out/table.md and out/table.csv."""
    records = load_checked(runs, columns) if records is None else records
    return write_aggregate(aggregate(flatten(records, columns)), out, wide or columns != DEFAULT_COLUMNS)


def write_aggregate(agg: pd.DataFrame, out: Path, wide: bool = False) -> tuple[str, Path, Path]:
    """out/table.md (every column) and out/table.csv; returns the terminal's text (NARROW unless ``wide``)."""
    common = {k: agg[k].iloc[0] for k in ("backbone", "dataset", "recipe", "epochs", "train_n") if agg[k].nunique() == 1}
    setting = ", ".join(f"{k} {v}" for k, v in common.items())
    deltas = any(c.startswith(DELTA) for c in agg.columns)
    head = (f"Mean ± 95% CI (t-interval) over seeds; {setting}.\nseeds: scored / run; NMI: K-Means NMI"
            + ("; Δ: A - baseline paired by seed, 95% CI, verdict" if deltas else "") + ".\n\n")
    text = head + markdown(agg) + "\n"
    md, csv = Path(out) / "table.md", Path(out) / "table.csv"
    atomic_write_bytes(md, text.encode())
    atomic_write_bytes(csv, agg.to_csv(index=False).encode())
    if wide:
        return text, md, csv
    return head + markdown(agg, wide=False) + vs_floor_table(agg) + f"\n(every column: {md}, or --wide)\n", md, csv


def vs_floor_table(agg: pd.DataFrame) -> str:
    """The terminal's second table, where the records hold random-init floors: each method's paired gain over the
    untrained encoder of its own backbone (the main job's question), which the narrow table has no room for."""
    if VS_COLUMN not in agg or agg[VS_COLUMN].isna().all():
        return ""
    rows = agg[agg[VS_COLUMN].notna()]
    cells = {c: [_gain(r, c) for _, r in rows.iterrows()] for c in VS_FLOOR}
    shown = pd.DataFrame({"method": rows["method"], "backbone": rows["backbone"],
                          "kNN gain": cells["knn.top1"], "linear gain": cells["linear.top1"],
                          "above on both": [v.rsplit(": ", 1)[-1] for v in rows[VS_COLUMN]]})
    return ("\n\nvs random init (paired by seed; points, mean [95% t-interval]); above: every run scored and both "
            "intervals > 0.\n\n" + shown.to_markdown(index=False) + "\n")


def _gain(row: pd.Series, metric: str) -> str:
    mean, lo, hi = (row.get(f"vs_random.{metric}.{k}", math.nan) for k in ("gain", "lo", "hi"))
    if pd.isna(mean):
        return "-"
    return f"{mean:+.1f}" + ("" if pd.isna(lo) else f" [{lo:+.1f}, {hi:+.1f}]")
