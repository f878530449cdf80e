"""The reports of a search: per study trials.csv, report.md and a budget curve; over methods summary.md/.csv and
budget_curves.png/.csv (expected best validation score after n trials, Dodge et al. 2019)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from bench.experiments.search_space import method_knobs
from bench.experiments.study import counted
from bench.stats import MIN_BCA_SEEDS, Scores, budget_curve, interval, pct, plot_budget_curves, summarise
from bench.store import atomic_write_bytes
from methods import METHODS

FRESH_SEED_BASE = 1000  # the best configuration's re-runs use seeds 1000, 1001, ...: never the search's seed 0


def short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def budget_values(study) -> list[float]:
    """One score per finished trial: COMPLETE its value, PRUNED its last reported value, FAIL chance level.

    Counting failures at chance keeps a method whose space is half unstable from looking as good as a
    robust one in the budget curve.
    """
    chance = study.user_attrs.get("chance", math.nan)
    out = []
    for t in counted(study):  # a killed worker's trial that was retried counts once, as its retry
        if t.state == TrialState.COMPLETE:
            out.append(t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            out.append(t.intermediate_values[max(t.intermediate_values)])
        elif t.state == TrialState.FAIL:
            out.append(chance)
    return out


def importances(study) -> dict[str, dict[str, float] | str]:
    """fANOVA and PED-ANOVA importances over COMPLETE trials, or why they could not be computed."""
    out: dict[str, dict[str, float] | str] = {}
    for label, evaluator in (("fanova", FanovaImportanceEvaluator(seed=0)), ("ped-anova", PedAnovaImportanceEvaluator())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[label] = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
            out[label] = f"n/a ({str(err).splitlines()[0][:100]})"
    return out


def trials_frame(study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "paper_defaults": bool(t.user_attrs.get("paper_defaults", False)),
                     "fail_reason": t.user_attrs.get("fail_reason", ""), "seconds": secs,
                     **{f"param.{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def _importance_text(imp: dict[str, float] | str, top: int | None = None) -> str:
    if isinstance(imp, str):
        return imp
    ranked = sorted(imp.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v:.2f}" for k, v in ranked) or "-"


def paper_trial_value(study) -> float:
    for t in counted(study):  # a retry of the paper's point carries its user attrs
        if t.user_attrs.get("paper_defaults"):
            return t.value if t.value is not None else math.nan
    return math.nan


def best_trial(study):
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def study_report(study, suite, out: Path, tuned: Scores) -> dict[str, Any]:
    """Write <out>/<study>/{trials.csv, report.md, budget.png} of a study of ``suite``; return the summary row.

    ``tuned``: the best configuration's test scores, {seed: score} (or a list where the seeds are not known)."""
    d = Path(out) / study.study_name
    df = trials_frame(study)
    atomic_write_bytes(d / "trials.csv", df.to_csv(index=False).encode())
    curve = budget_curve(budget_values(study))
    plot_budget_curves({study.user_attrs["method"]: curve}, d / "budget.png", f"{study.study_name}: expected best validation")
    imp = importances(study)
    best = best_trial(study)
    states = df["state"].value_counts().to_dict() if len(df) else {}
    t = summarise(list(tuned.values()) if isinstance(tuned, dict) else list(tuned))
    row = {"method": study.user_attrs["method"], "study": study.study_name, "trials": len(df),
           **{s.lower(): int(states.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL")},
           "val_paper": paper_trial_value(study), "val_best": best.value if best else math.nan,
           "best_params": dict(best.params) if best else {}, "test_tuned_n": t["n"], "test_tuned_mean": t["mean"],
           "test_tuned_lo": t["ci_lo"], "test_tuned_hi": t["ci_hi"], "test_tuned_runs": t["runs"],
           "test_tuned_ci": t["ci"], "tuned": tuned,
           "fanova": _importance_text(imp["fanova"]), "ped_anova": _importance_text(imp["ped-anova"]),
           "fanova_top3": _importance_text(imp["fanova"], 3), "ped_anova_top3": _importance_text(imp["ped-anova"], 3),
           "curve": curve}
    shown = df.drop(columns=["seconds"]).copy()
    shown["value"] = [pct(v) for v in shown["value"]]
    for c in shown.columns:
        if c.startswith("param."):
            shown[c] = [short(v) for v in shown[c]]
    lines = [f"## Study `{study.study_name}`", "",
             f"Suite `{suite.name}`: {suite.scale.dataset}, validation split {suite.val_fraction:.0%} of the training "
             f"subset ({study.user_attrs.get('n_fit')} fit / {study.user_attrs.get('n_val')} validation), "
             f"{suite.scale.epochs} epoch(s). Objective: validation kNN top-1 (%); trial 0 is the paper's point.", "",
             f"- trials: {row['complete']} complete, {row['pruned']} pruned, {row['fail']} failed",
             f"- paper defaults: {pct(row['val_paper'])}; best: {pct(row['val_best'])} with "
             + ", ".join(f"{k}={short(v)}" for k, v in row["best_params"].items()),
             f"- best re-run on the test split with fresh seeds ({t['n']} scored / {t['runs']} run): {pct(t['mean'])} "
             f"{interval(t['ci_lo'], t['ci_hi'])} (95% {t['ci']}-interval)",
             f"- importance (fANOVA): {row['fanova']}", f"- importance (PED-ANOVA): {row['ped_anova']}",
             f"- knobs searched: lr, weight_decay, batch_size, "
             f"{', '.join(k.field for k in method_knobs(METHODS.get(row['method'])))}", "",
             shown.to_markdown(index=False), "", "![budget](budget.png)", ""]
    atomic_write_bytes(d / "report.md", "\n".join(lines).encode())
    return row


def summary_markdown(rows: list[dict[str, Any]], suite, trials: int, command: str = "") -> str:
    table = pd.DataFrame([{
        "method": r["method"], "trials (ok/pruned/failed)": f"{r['complete']}/{r['pruned']}/{r['fail']}",
        "val paper %": pct(r["val_paper"]), "val best %": pct(r["val_best"]),
        "test tuned %": pct(r["test_tuned_mean"]), "95% CI": interval(r["test_tuned_lo"], r["test_tuned_hi"]),
        "CI": r["test_tuned_ci"], "n scored / run": f"{r['test_tuned_n']}/{r['test_tuned_runs']}",
        "fANOVA (top 3)": r["fanova_top3"], "PED-ANOVA (top 3)": r["ped_anova_top3"]}
        for r in rows])
    s = suite.scale
    head = [f"## Search `{suite.name}`: {trials} trials per method", "",
            f"{s.dataset}, {s.per_class or 'all'} train images per class ({suite.val_fraction:.0%} held out for validation), "
            f"{s.epochs} epoch(s), {s.backbone}. Val: validation kNN top-1 of the paper's point (trial 0) and of the best "
            f"trial. Test tuned: the best configuration re-trained on the whole training subset with fresh seeds "
            f"({FRESH_SEED_BASE}, ...) and scored on the test split ({s.test_per_class or 'all'} per class): mean and 95% "
            f"interval over the scored seeds (Student's t, CI `t`; a BCa bootstrap, `BCa`, only from {MIN_BCA_SEEDS} "
            "scored seeds, as fewer cap it at their range); n scored / run counts seeds with a score / seeds run. "
            "Importances: fANOVA and PED-ANOVA over complete trials (noisy at "
            "this budget). Budget curves: expected best validation score after n trials (Dodge et al. 2019), drawing "
            "from this study's finished trials (a pruned trial counts at its last score, a failed one at chance); "
            "TPE's trials are not independent draws, so read the curves as indicative.", "",
            f"Command: `{command}`" if command else "", "", table.to_markdown(index=False), "",
            "![budget curves](budget_curves.png)", ""]
    return "\n".join(head)


def write_summary(rows: list[dict[str, Any]], suite, trials: int, out: Path, command: str) -> None:
    """The cross-method summary of a search over several methods: summary.md/.csv, budget_curves.png/.csv."""
    plot_budget_curves({r["method"]: r["curve"] for r in rows}, Path(out) / "budget_curves.png",
                       f"{suite.name}: expected best validation kNN vs trials")
    atomic_write_bytes(Path(out) / "summary.md", summary_markdown(rows, suite, trials, command).encode())
    flat = pd.DataFrame([{k: v for k, v in r.items() if k not in ("curve", "tuned")} for r in rows])
    atomic_write_bytes(Path(out) / "summary.csv", flat.to_csv(index=False).encode())
    # Per-seed tuned scores, so that the summary can be remade (rewrite_summary) without the study or its records.
    tuned = pd.DataFrame([{"method": r["method"], "seed": s, "value": v} for r in rows for s, v in
                          (r["tuned"].items() if isinstance(r["tuned"], dict) else ((None, v) for v in r["tuned"]))],
                         columns=["method", "seed", "value"])
    atomic_write_bytes(Path(out) / "tuned.csv", tuned.to_csv(index=False).encode())
    curves = pd.concat([r["curve"].assign(method=r["method"]) for r in rows], ignore_index=True)
    atomic_write_bytes(Path(out) / "budget_curves.csv", curves.to_csv(index=False).encode())


def rewrite_summary(out: Path, suite, command: str) -> str:
    """Remake summary.md/.csv from the committed summary.csv, tuned.csv and budget_curves.csv (no study, no run)."""
    out = Path(out)
    summary = pd.read_csv(out / "summary.csv")
    tuned, curves = pd.read_csv(out / "tuned.csv"), pd.read_csv(out / "budget_curves.csv")
    rows = []
    for r in summary.to_dict("records"):
        g = tuned[tuned["method"] == r["method"]]
        values = g["value"].tolist() if g["seed"].isna().any() else dict(zip(g["seed"].astype(int), g["value"], strict=True))
        t = summarise(list(values.values()) if isinstance(values, dict) else values)
        r.update({"test_tuned_n": t["n"], "test_tuned_runs": t["runs"], "test_tuned_mean": t["mean"],
                  "test_tuned_lo": t["ci_lo"], "test_tuned_hi": t["ci_hi"], "test_tuned_ci": t["ci"], "tuned": values,
                  "curve": curves[curves["method"] == r["method"]].drop(columns="method").reset_index(drop=True)})
        rows.append(r)
    write_summary(rows, suite, int(summary["trials"].max()), out, command)
    return summary_markdown(rows, suite, int(summary["trials"].max()), command)
