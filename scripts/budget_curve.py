"""Budget curve of the main job: SGD steps vs. gain over the random-init floor of the same encoder, same seeds.

Each method is trained at each budget (whole epochs of the suite's subset) for each seed, scored on kNN and the
linear probe, and compared with the `random` method's record of the same seed and backbone (a paired
difference, mean and 95% t-interval). Writes ``<out>/budget_curve.csv`` and ``budget_curve.png``.

    OMP_NUM_THREADS=1 python scripts/budget_curve.py --methods simclr,byol,vicreg --epochs 1,2,4,8 --seeds 0,1,2 \
        --out results/quick

Recipe options (``--lr`` ...) change the unified recipe for this curve only, to compare recipes by measurement.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.commands.values import parse_pairs
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data.cache import prepare_matplotlib
from bench.experiments.scales import backbone_for
from bench.experiments.suites import FLOOR_BACKBONE_ARGS, QUICK_BATCH, QUICK_PER_CLASS, QUICK_TEST_PER_CLASS
from bench.report import load_records
from bench.runner import Options, json_like, recipe_diff, run_many
from bench.store import atomic_write_bytes
from methods.spec import UNIFIED_RECIPE

METRICS = ("knn", "linear")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="simclr,byol,vicreg")
    p.add_argument("--epochs", default="1,2,4,8", help="comma-separated budgets in epochs of the subset")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=QUICK_BATCH)
    p.add_argument("--per-class", type=int, default=QUICK_PER_CLASS)
    p.add_argument("--test-per-class", type=int, default=QUICK_TEST_PER_CLASS)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of the unified recipe for this curve (lr=0.3, optimizer=lars, clip_grad=1)")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="change a field of each method's own config for this curve (n_local_crops=0); one method")
    p.add_argument("--label", default="", help="a name for this variant in the CSV's recipe column "
                                                 "(default: the --set and --method-arg values)")
    p.add_argument("--out", default="results/quick", help="folder for budget_curve.csv/.png")
    p.add_argument("--runs", default="/tmp/repbench-budget", help="where the runs' records go")
    p.add_argument("--also", action="append", default=[], metavar="DIR",
                   help="add the records under DIR (e.g. a quick-suite run) of these methods, batch and subset")
    return p.parse_args()


def recipe_from(sets: list[str]):
    recipe = UNIFIED_RECIPE
    for item in sets:
        key, _, value = item.partition("=")
        if not hasattr(recipe, key):
            raise UsageError(f"--set {item}: the recipe has no field {key!r}")
        default = getattr(UNIFIED_RECIPE, key)
        recipe = replace(recipe, **{key: value if isinstance(default, str) else type(default)(float(value))})
    return recipe


def configs(a: argparse.Namespace) -> list[RunConfig]:
    recipe = recipe_from(a.set)
    name = "unified" if recipe == UNIFIED_RECIPE else "unified+custom"
    seeds = [int(s) for s in a.seeds.split(",")]
    common = dict(dataset="fashion-mnist", batch_size=a.batch_size, per_class=a.per_class, recipe=recipe,
                  recipe_name=name, test_per_class=a.test_per_class, protocols=METRICS, suite="budget")
    methods = a.methods.split(",")
    if a.method_arg and len(methods) > 1:
        raise UsageError("--method-arg changes one method's config: give one method in --methods")
    method_args = parse_pairs(a.method_arg, "--method-arg")
    floors = sorted({backbone_for(m, "convnet") for m in methods})
    # The floor's encoder as the method builds it (MAE's ViT pools by mean), as the quick suite pairs them.
    out = [RunConfig(method="random", backbone=b, epochs=1, seed=s, backbone_args=FLOOR_BACKBONE_ARGS.get(b, {}), **common)
           for b in floors for s in seeds]
    for m in methods:
        for e in (int(x) for x in a.epochs.split(",")):
            out += [RunConfig(method=m, backbone=backbone_for(m, "convnet"), epochs=e, seed=s, method_args=method_args,
                              **common) for s in seeds]
    return out


def paired(records: list[dict], label: str) -> pd.DataFrame:
    """One row per (method, epochs, metric): steps, mean gain over random init (points), 95% t-interval, n."""
    def value(r: dict, metric: str) -> float:
        v = r.get("metrics", {}).get(metric, {}).get("top1")
        return float(v) if isinstance(v, (int, float)) else np.nan

    # Each record is paired with the floor measured beside it (same folder): records made at other times may carry
    # another version of a protocol (the linear probe's lambda selection changed between two of ours).
    floor = {(r.get("_source"), r["config"]["backbone"], r["config"]["seed"], m): value(r, m)
             for r in records if r["config"]["method"] == "random"
             and r["config"].get("backbone_args", {}) == FLOOR_BACKBONE_ARGS.get(r["config"]["backbone"], {})
             for m in METRICS}
    rows = {}
    for r in records:
        c = r["config"]
        if c["method"] == "random":
            continue
        for m in METRICS:
            key = (c["method"], c["epochs"], m)
            row = rows.setdefault(key, {"steps": r.get("training", {}).get("steps"), "gains": [], "diverged": 0})
            row["diverged"] += r.get("status") == "diverged"
            row["gains"].append(100 * (value(r, m) - floor[(r.get("_source"), c["backbone"], c["seed"], m)]))
            if r.get("status") == "ok" and r.get("training", {}).get("steps"):
                row["steps"] = r["training"]["steps"]
    out = []
    for (method, epochs, metric), row in sorted(rows.items()):
        g = np.array([x for x in row["gains"] if np.isfinite(x)])
        half = stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else np.nan
        mean = g.mean() if len(g) else np.nan
        out.append({"recipe": label, "method": method, "epochs": epochs, "steps": row["steps"], "metric": metric,
                    "gain": round(mean, 2), "lo": round(mean - half, 2), "hi": round(mean + half, 2),
                    "n": len(g), "runs": len(row["gains"]), "diverged": row["diverged"]})
    return pd.DataFrame(out)


def plot(df: pd.DataFrame, path: Path) -> None:
    """One small panel per method (and recipe): kNN and linear gain against steps, with the zero line."""
    prepare_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(df.groupby(["recipe", "method"]))
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharex=True)
    for ax, ((recipe, method), g) in zip(axes.flat, groups, strict=False):
        for metric, colour in zip(METRICS, ("tab:blue", "tab:orange"), strict=True):
            m = g[g.metric == metric].sort_values("steps")
            ax.errorbar(m.steps, m.gain, yerr=[m.gain - m.lo, m.hi - m.gain], marker="o", ms=3, capsize=2,
                        color=colour, label=metric)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(method if df.recipe.nunique() == 1 else f"{method} ({recipe})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("SGD steps (batch 64)", fontsize=9)
    fig.supylabel("top-1 minus random init (points), 95% t-interval", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def also(a: argparse.Namespace) -> list[dict]:
    """Records of other runs (a suite's) at this curve's batch, subset and recipe, for its methods and floors."""
    wanted = {*a.methods.split(","), "random"}
    recipe = recipe_from(a.set)
    same = dict(batch_size=a.batch_size, per_class=a.per_class, test_per_class=a.test_per_class)
    method_args = parse_pairs(a.method_arg, "--method-arg")  # the variant's; the floors (random) have none
    return [{**r, "_source": d} for d in a.also for r in load_records(Path(d))
            if r["config"]["method"] in wanted and r.get("recipe_diff_from_unified") == json_like(recipe_diff(recipe))
            and all(r["config"].get(k) == v for k, v in same.items())
            and r["config"].get("method_args", {}) == ({} if r["config"]["method"] == "random" else method_args)]


def first_pass(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: the fewest measured steps at which every metric's interval lies above 0, or the most measured."""
    out = []
    for (recipe, method), g in df.groupby(["recipe", "method"]):
        wide = g.pivot_table(index="steps", columns="metric", values="lo", dropna=False).sort_index()
        ok = wide[(wide > 0).all(axis=1) & (wide.notna().all(axis=1))]
        out.append({"recipe": recipe, "method": method, "steps_measured": ",".join(str(int(x)) for x in wide.index),
                    "passes_at": f"{int(ok.index[0])} steps" if len(ok) else f"not by {int(wide.index.max())} steps"})
    return pd.DataFrame(out)


def main() -> None:
    a = parse()
    records = list(run_many(configs(a), Path(a.runs), Options(reuse=True)).values())
    ran = {r.get("run_id") for r in records}
    records += [r for r in also(a) if r.get("run_id") not in ran]  # an --also folder may hold this curve's own runs
    label = a.label or (",".join(a.set + a.method_arg) or "unified")
    df = paired(records, label)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "budget_curve.csv"
    if csv.exists():  # curves of other methods or recipes stay; this run's rows replace their own
        old = pd.read_csv(csv)
        keep = ~old.set_index(["recipe", "method", "epochs", "metric"]).index.isin(
            df.set_index(["recipe", "method", "epochs", "metric"]).index)
        df = pd.concat([old[keep], df], ignore_index=True)
    df = df.sort_values(["recipe", "method", "metric", "epochs"])
    atomic_write_bytes(csv, df.to_csv(index=False).encode())
    plot(df, out / "budget_curve.png")
    print(df.to_string(index=False))
    print(first_pass(df).to_string(index=False))


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        sys.exit(print(f"budget_curve.py: {err}", file=sys.stderr) or 2)
