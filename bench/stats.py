"""Statistics for ablations and searches: bootstrap intervals, method-vs-engineering gaps, budget curves.

- ``bootstrap_ci``: 95% BCa bootstrap interval of the mean over seeds (scipy.stats.bootstrap).
- ``gap``: difference of two methods' means with a bootstrap interval (independent seeds).
- ``method_vs_engineering``: for each pair of methods the gap under paper recipes, the unified recipe and
  an equal tuning budget, and the share of the paper-recipe gap that the recipe explains.
- ``expected_max`` / ``budget_curve``: expected best validation score after n trials drawn from the
  observed ones (Dodge et al. 2019, "Show Your Work", Sec. 3), and a PNG of the curves.
"""

from __future__ import annotations

import io
import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.data.cache import prepare_matplotlib
from bench.store import atomic_write_bytes

CONFIDENCE = 0.95
N_RESAMPLES = 9999


def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def bootstrap_ci(values: Iterable[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of the mean; NaN below 2 finite values, a point when all values agree.

    With 3 seeds there are only 10 distinct resamples, so the interval is no wider than the values'
    range: read it beside n (reported with it everywhere).
    """
    v = _finite(values)
    if len(v) < 2:
        return math.nan, math.nan
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def gap(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
        seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its bootstrap interval, resampling each method's seeds independently."""
    a, b = _finite(a), _finite(b)
    if not len(a) or not len(b):
        return math.nan, math.nan, math.nan
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return d, d, d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on tiny samples warns about its own accuracy
        res = stats.bootstrap((a, b), _mean_diff, confidence_level=confidence, n_resamples=n_resamples,
                              vectorized=True, rng=np.random.default_rng(seed), method="percentile")
    return d, float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_halfwidth(values: Iterable[float], confidence: float = CONFIDENCE) -> float:
    v = _finite(values)
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def summarise(values: Sequence[float]) -> dict[str, float]:
    """n (finite values), mean, 95% bootstrap interval and t half-width."""
    v = _finite(values)
    lo, hi = bootstrap_ci(v)
    return {"n": len(v), "mean": float(v.mean()) if len(v) else math.nan, "ci_lo": lo, "ci_hi": hi,
            "t95": t_halfwidth(v)}


def cell_table(df: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """One row per group of ``by``: n, mean, bootstrap CI, t half-width, and the non-ok statuses seen."""
    rows = []
    for keys, g in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys, strict=True))
        row.update(summarise(g[value].tolist()))
        row["seeds"] = len(g)
        bad = g.loc[g["status"] != "ok", "status"] if "status" in g else pd.Series(dtype=str)
        row["flags"] = ", ".join(f"{n}/{len(g)} {s}" for s, n in bad.value_counts().items())
        rows.append(row)
    return pd.DataFrame(rows)


def pct(x: float, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def interval(lo: float, hi: float, digits: int = 1) -> str:
    return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{pct(lo, digits)}, {pct(hi, digits)}]"


# --------------------------------------------------------------------------- method vs engineering

REGIMES = ("paper", "unified", "tuned")


def method_vs_engineering(values: Mapping[tuple[str, str], Sequence[float]]) -> pd.DataFrame:
    """Pairwise gaps from ``{(method, regime): per-seed scores}``, regime in paper / unified / tuned.

    Each pair is oriented so that the paper-recipe gap is >= 0 (the first method wins as published).
    ``recipe_share`` = (gap_paper - gap_unified) / gap_paper: the part of the published gap that
    disappears when both methods get the same recipe (1 = all engineering, 0 = all method, < 0 = the
    unified recipe widens it). It is NaN when the paper gap is 0, and ``paper_gap_resolved`` is False
    when the paper gap's interval contains 0 (the share is then shown as "n.s.").
    """
    methods = sorted({m for m, _ in values})
    rows = []
    for a, b in itertools.combinations(methods, 2):
        row: dict[str, object] = {}
        g_paper = gap(values.get((a, "paper"), ()), values.get((b, "paper"), ()))
        if math.isfinite(g_paper[0]) and g_paper[0] < 0:
            a, b = b, a
        row["method_a"], row["method_b"] = a, b
        for regime in REGIMES:
            d, lo, hi = gap(values.get((a, regime), ()), values.get((b, regime), ()))
            row[f"gap_{regime}"], row[f"gap_{regime}_lo"], row[f"gap_{regime}_hi"] = d, lo, hi
        gp, gu = row["gap_paper"], row["gap_unified"]
        row["recipe_share"] = (gp - gu) / gp if math.isfinite(gp) and math.isfinite(gu) and gp != 0 else math.nan
        # A share of a gap the seeds cannot tell from 0 is noise divided by noise; flag it.
        row["paper_gap_resolved"] = bool(row["gap_paper_lo"] > 0 or row["gap_paper_hi"] < 0)
        rows.append(row)
    return pd.DataFrame(rows)


def method_vs_engineering_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(fewer than two methods with records)\n"
    shown = pd.DataFrame({"A": table["method_a"], "B": table["method_b"]})
    for regime in REGIMES:
        shown[f"gap {regime} (pp)"] = [
            "-" if not math.isfinite(d) else f"{100 * d:+.1f} {interval(lo, hi)}"
            for d, lo, hi in zip(table[f"gap_{regime}"], table[f"gap_{regime}_lo"], table[f"gap_{regime}_hi"], strict=True)]
    shown["recipe share"] = ["-" if not math.isfinite(s) else f"{100 * s:.0f}%" if ok else "n.s."
                             for s, ok in zip(table["recipe_share"], table["paper_gap_resolved"], strict=True)]
    return shown.to_markdown(index=False) + "\n"


# --------------------------------------------------------------------------- budget curves (Dodge et al. 2019)


def expected_max(values: Iterable[float], n: int) -> float:
    """E[max of n draws with replacement from the observed values] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n]."""
    v = np.sort(_finite(values))
    if not len(v) or n < 1:
        return math.nan
    i = np.arange(1, len(v) + 1) / len(v)
    return float(np.sum(v * (i**n - (i - 1 / len(v)) ** n)))


def budget_curve(values: Iterable[float], n_max: int | None = None) -> pd.DataFrame:
    """Expected max and its standard deviation for n = 1..n_max trials (default: as many as observed)."""
    v = np.sort(_finite(values))
    n_max = n_max or len(v)
    rows = []
    for n in range(1, n_max + 1):
        i = np.arange(1, len(v) + 1) / len(v)
        p = i**n - (i - 1 / len(v)) ** n
        mean = float(np.sum(v * p))
        rows.append({"trials": n, "expected_max": mean, "std": float(math.sqrt(max(0.0, np.sum(v**2 * p) - mean**2)))})
    return pd.DataFrame(rows)


def _save_png(fig, path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_budget_curves(curves: Mapping[str, pd.DataFrame], path, title: str = "") -> None:
    """One line per method, shaded +- 1 std of the max (as in Dodge et al.'s figures)."""
    prepare_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, c in curves.items():
        if c.empty:
            continue
        y, s = 100 * c["expected_max"], 100 * c["std"]
        ax.plot(c["trials"], y, marker="o", ms=3, label=name)
        ax.fill_between(c["trials"], y - s, y + s, alpha=0.15)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("hyperparameter trials")
    ax.set_ylabel("expected best validation kNN top-1 (%)")
    ax.set_title(title or "Expected validation performance vs tuning budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save_png(fig, path)


def plot_cells(table: pd.DataFrame, label: str, path, title: str = "") -> None:
    """Each cell's mean (dot) with its bootstrap interval, on an axis zoomed to the data."""
    prepare_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(table) + 1.2))
    y = np.arange(len(table))[::-1]
    mean = 100 * table["mean"].to_numpy(float)
    lo = np.nan_to_num(mean - 100 * table["ci_lo"].to_numpy(float))
    hi = np.nan_to_num(100 * table["ci_hi"].to_numpy(float) - mean)
    ax.errorbar(mean, y, xerr=[lo, hi], fmt="o", color="tab:blue", capsize=3)
    ax.set_yticks(y, table[label].tolist(), fontsize=7)
    ax.set_ylim(-0.6, len(table) - 0.4)
    ax.set_xlabel("test kNN top-1 (%), mean and 95% bootstrap CI over seeds")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
