"""The collapse signals of an ablation grid's runs: ``signals.csv`` (each run's last recorded epoch, as
bench/collapse.py measured it during training) and a table of each cell against its method's first cell.

A collapse claim (SimSiam without stop-gradient, DINO without centering) is read on these signals more than on kNN:
at short budgets a collapsing cell can score near an untrained encoder while its outputs already lose rank or
spread. The first cell of each method is the reference because every paper grid lists the paper's setting first.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.stats import difference

SIGNALS = ("loss", "embed_std_ratio", "effective_rank", "feature_std_ratio", "feature_effective_rank",
           "teacher_entropy", "teacher_batch_entropy", "kl_teacher_student")


def signals_frame(runs: pd.DataFrame, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per run of ``runs`` (runs.csv's frame): status, the last epoch's signals, the watchdog's reason."""
    rows = []
    for r in runs.itertuples():
        training = records.get(r.run_id, {}).get("training", {})
        last = (training.get("history") or [{}])[-1]
        rows.append({"method": r.method, "cell": r.cell, "seed": r.seed, "status": r.status,
                     "epoch": last.get("epoch"), **{k: last.get(k) for k in SIGNALS},
                     "max_entropy": last.get("max_entropy"),
                     "reason": (training.get("status_detail") or {}).get("reason", "")})
    return pd.DataFrame(rows)


def signals_markdown(frame: pd.DataFrame) -> str:
    """Per cell and signal: the mean over seeds, and the paired difference from the method's first cell."""
    shown = [k for k in SIGNALS if k in frame and frame[k].notna().any()]
    if frame.empty or not shown:
        return "(no run recorded collapse signals)"
    rows = []
    for method, g in frame.groupby("method", sort=False):
        by_seed = {c: gc.set_index("seed") for c, gc in g.groupby("cell", sort=False)}  # in grid order
        first = next(iter(by_seed))
        for c, runs in by_seed.items():
            row = {"method": method, "cell": c, "flagged": int((runs["status"] == "collapsed").sum())}
            for k in shown:
                row[k] = _mean_and_difference(runs[k], by_seed[first][k], c == first)
            rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def _mean_and_difference(values: pd.Series, reference: pd.Series, is_reference: bool) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "-"
    text = f"{v.mean():.3g}"
    if is_reference:
        return text
    d = difference(v.to_dict(), pd.to_numeric(reference, errors="coerce").dropna().to_dict())
    if not math.isfinite(d.diff):
        return text
    bounds = f" [{d.lo:+.3g}, {d.hi:+.3g}]" if math.isfinite(d.lo) and math.isfinite(d.hi) else ""
    return f"{text} ({d.diff:+.3g}{bounds})"
