"""Statistics over seeds: intervals, paired differences, method-vs-engineering gaps, budget curves.

- ``mean_interval``: Student's t below ``MIN_BCA_SEEDS`` scored seeds, BCa bootstrap from there (a bootstrap of 3
  values is no wider than their range: [.70, .72, .75] gives [.70, .75] where the t-interval is +-.063).
- ``difference``: a - b paired over the seeds both cells scored; Welch's t only when they share none.
- ``expected_max`` / ``budget_curve``: expected best validation score after n trials drawn from the observed ones
  (Dodge et al. 2019, "Show Your Work", Sec. 3), and a PNG of the curves.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from bench.data.cache import prepare_matplotlib
from bench.store import atomic_write_bytes

CONFIDENCE = 0.95
MIN_BCA_SEEDS = 10  # below this a bootstrap of the mean is narrower than its coverage claims; use t
N_RESAMPLES = 9999
# Per-seed scores: {seed: score} pairs across cells; a plain sequence has lost its seeds and is never paired.
Scores = Mapping[int, float] | Sequence[float]


def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean (scipy.stats.t); NaN below 2 finite values, a point when all agree."""
    v = _finite(values)
    if len(v) < 2:
        return math.nan, math.nan
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    lo, hi = stats.t.interval(confidence, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return float(lo), float(hi)


def t_halfwidth(values: Iterable[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of ``t_interval`` (bench/report.py's "mean +- x")."""
    lo, hi = t_interval(values, confidence)
    return (hi - lo) / 2


def bootstrap_ci(values: Iterable[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of the mean (scipy.stats.bootstrap); only trusted from MIN_BCA_SEEDS values."""
    v = _finite(values)
    if len(v) < 2:
        return math.nan, math.nan
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """(lo, hi, kind) of the mean's interval: kind "t" below MIN_BCA_SEEDS finite values, else "BCa"."""
    v = _finite(values)
    return (*bootstrap_ci(v, confidence), "BCa") if len(v) >= MIN_BCA_SEEDS else (*t_interval(v, confidence), "t")


def summarise(values: Sequence[float]) -> dict[str, object]:
    """n scored (finite values), n run (all values), mean and its 95% interval with the interval's kind."""
    v = _finite(values)
    lo, hi, kind = mean_interval(v)
    return {"n": len(v), "runs": len(values), "mean": v.mean() if len(v) else math.nan, "ci_lo": lo, "ci_hi": hi, "ci": kind}


def cell_table(df: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """One row per group of ``by``: n scored, seeds run, mean, 95% interval, and the non-ok statuses seen."""
    rows = []
    for keys, g in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys, strict=True))
        s = summarise(g[value].tolist())
        row.update({k: s[k] for k in ("n", "mean", "ci_lo", "ci_hi", "ci")})
        row["seeds"] = len(g)
        bad = g.loc[g["status"] != "ok", "status"] if "status" in g else pd.Series(dtype=str)
        row["flags"] = ", ".join(f"{n}/{len(g)} {s}" for s, n in bad.value_counts().items())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- differences between cells


@dataclass(frozen=True)
class Difference:
    diff: float  # mean of per-seed differences (paired) or difference of means (Welch)
    lo: float
    hi: float
    kind: str  # "paired", "Welch" (no shared seed), or "-" (not enough values)
    n: int  # shared seeds scored in both cells (paired), or all scored values (Welch)

    @property
    def verdict(self) -> str:  # "resolved": the interval excludes 0
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return "-"
        return "resolved" if self.lo > 0 or self.hi < 0 else "n.s."


def _by_seed(scores: Scores) -> dict[int, float] | None:
    return {int(s): float(v) for s, v in scores.items() if v is not None and math.isfinite(float(v))} \
        if isinstance(scores, Mapping) else None


def difference(a: Scores, b: Scores, confidence: float = CONFIDENCE) -> Difference:
    """a - b: paired over the seeds both cells scored; Welch's t only when they share none (or lost their seeds)."""
    sa, sb = _by_seed(a), _by_seed(b)
    shared = sorted(sa.keys() & sb.keys()) if sa is not None and sb is not None else []
    if shared:
        d = np.array([sa[s] - sb[s] for s in shared])
        lo, hi, _ = mean_interval(d, confidence)
        return Difference(float(d.mean()), lo, hi, "paired", len(shared))
    va = _finite(sa.values() if sa is not None else a)
    vb = _finite(sb.values() if sb is not None else b)
    if not len(va) or not len(vb):
        return Difference(math.nan, math.nan, math.nan, "-", 0)
    d, n = float(va.mean() - vb.mean()), len(va) + len(vb)
    if len(va) < 2 or len(vb) < 2 or (np.ptp(va) == 0 and np.ptp(vb) == 0):
        return Difference(d, *((math.nan,) * 2 if min(len(va), len(vb)) < 2 else (d, d)), "Welch", n)
    ci = stats.ttest_ind(va, vb, equal_var=False).confidence_interval(confidence)
    return Difference(d, float(ci.low), float(ci.high), "Welch", n)


def cell_differences(df: pd.DataFrame, group: str = "method", cell: str = "cell", value: str = "value") -> pd.DataFrame:
    """Every pair of cells within a group, later-listed minus earlier-listed, paired by ``seed``."""
    rows = []
    for key, g in df.groupby(group, sort=False):
        scores = {c: dict(zip(gc["seed"], gc[value], strict=True)) for c, gc in g.groupby(cell, sort=False)}
        for b, a in itertools.combinations(scores, 2):
            d = difference(scores[a], scores[b])
            rows.append({group: key, "a": a, "b": b, "diff": d.diff, "lo": d.lo, "hi": d.hi, "kind": d.kind,
                         "n": d.n, "verdict": d.verdict})
    return pd.DataFrame(rows)


def pct(x: float, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def interval(lo: float, hi: float, digits: int = 1, signed: bool = False) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    f = (lambda x: f"{100 * x:+.{digits}f}") if signed else (lambda x: pct(x, digits))
    return f"[{f(lo)}, {f(hi)}]"


def difference_text(d: float, lo: float, hi: float, kind: str, verdict: str) -> str:
    """'+1.5 [+0.2, +2.7] resolved' in points; Welch (unpaired) intervals say so."""
    if not math.isfinite(d):
        return "-"
    return f"{100 * d:+.1f} {interval(lo, hi, signed=True)} {verdict}" + (" (Welch)" if kind == "Welch" else "")


def differences_markdown(table: pd.DataFrame, group: str = "method") -> str:
    if table.empty:  # a grid with one cell per method
        return "(no two cells of one method)"
    shown = pd.DataFrame({group: table[group], "A": table["a"], "B": table["b"], "n pairs": table["n"],
                          "A - B (pp), 95% CI, verdict": [difference_text(*r) for r in zip(
                              table["diff"], table["lo"], table["hi"], table["kind"], table["verdict"], strict=True)]})
    return shown.to_markdown(index=False)


# --------------------------------------------------------------------------- method vs engineering

REGIMES = ("paper", "unified", "tuned")


def method_vs_engineering(values: Mapping[tuple[str, str], Scores]) -> pd.DataFrame:
    """Pairwise gaps from ``{(method, regime): {seed: score}}``, regime in paper / unified / tuned.

    Each gap is ``difference`` (paired over shared seeds). Each pair is oriented so that the paper-recipe gap is
    >= 0 (the first method wins as published). ``recipe_share`` = (gap_paper - gap_unified) / gap_paper: the part
    of the published gap that disappears when both methods get the same recipe (1 = all engineering, 0 = all
    method, < 0 = the unified recipe widens it). It is NaN when the paper gap is 0, and ``paper_gap_resolved`` is
    False when the paper gap's interval contains 0 (the share is then shown as "n.s.").
    """
    methods = sorted({m for m, _ in values})
    rows = []
    for a, b in itertools.combinations(methods, 2):
        if difference(values.get((a, "paper"), ()), values.get((b, "paper"), ())).diff < 0:
            a, b = b, a
        row: dict[str, object] = {"method_a": a, "method_b": b}
        for regime in REGIMES:
            d = difference(values.get((a, regime), ()), values.get((b, regime), ()))
            row.update({f"gap_{regime}": d.diff, f"gap_{regime}_lo": d.lo, f"gap_{regime}_hi": d.hi,
                        f"gap_{regime}_kind": d.kind, f"gap_{regime}_n": d.n, f"gap_{regime}_verdict": d.verdict})
        gp, gu = row["gap_paper"], row["gap_unified"]
        row["recipe_share"] = (gp - gu) / gp if math.isfinite(gp) and math.isfinite(gu) and gp != 0 else math.nan
        # A share of a gap the seeds cannot tell from 0 is noise divided by noise; flag it.
        row["paper_gap_resolved"] = row["gap_paper_verdict"] == "resolved"
        rows.append(row)
    return pd.DataFrame(rows)


def method_vs_engineering_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(fewer than two methods with records)\n"
    shown = pd.DataFrame({"A": table["method_a"], "B": table["method_b"]})
    for regime in REGIMES:
        cols = [table[f"gap_{regime}{s}"] for s in ("", "_lo", "_hi", "_kind", "_verdict")]
        shown[f"gap {regime} (pp)"] = [difference_text(*r) for r in zip(*cols, strict=True)]
        shown[f"n {regime}"] = table[f"gap_{regime}_n"]
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


def _pyplot():
    prepare_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_budget_curves(curves: Mapping[str, pd.DataFrame], path, title: str = "") -> None:
    """One line per method, shaded +- 1 std of the max (as in Dodge et al.'s figures)."""
    plt = _pyplot()
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
    """Each cell's mean (dot) with its 95% interval, on an axis zoomed to the data."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(table) + 1.2))
    y = np.arange(len(table))[::-1]
    mean = 100 * table["mean"].to_numpy(float)
    lo = np.nan_to_num(mean - 100 * table["ci_lo"].to_numpy(float))
    hi = np.nan_to_num(100 * table["ci_hi"].to_numpy(float) - mean)
    ax.errorbar(mean, y, xerr=[lo, hi], fmt="o", color="tab:blue", capsize=3)
    ax.set_yticks(y, table[label].tolist(), fontsize=7)
    ax.set_ylim(-0.6, len(table) - 0.4)
    ax.set_xlabel("test kNN top-1 (%), mean and 95% CI over seeds (t below 10 seeds)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
