"""Running an ablation and its tables: mean, 95% bootstrap CI and n per cell, the method-vs-engineering table
of the recipe grid, one PNG per grid (statistics: bench/stats.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import UsageError
from bench.experiments.ablate import COMPOSITES, Grid, build, check_seeds, seeded
from bench.experiments.scales import SCALES, Scale, backbone_for, metric_of
from bench.report import load_records
from bench.runner import Options, run_many
from bench.stats import cell_table, interval, method_vs_engineering, method_vs_engineering_markdown, pct, plot_cells
from bench.store import atomic_write_bytes
from methods.spec import UNIFIED_RECIPE


def run_ablation(name: str, seeds: int, out: Path, scale_name: str = "quick", data_root: str | None = None,
                 tuned_runs: Path | None = None, log: Callable[[str], None] | None = None, jobs: int = 1) -> str:
    check_seeds(seeds)
    if scale_name not in SCALES:
        raise UsageError(f"unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}")
    scale = SCALES["smoke"] if name == "smoke" else SCALES[scale_name]
    grids = build(name, scale)
    if not any(g.cells for g in grids):
        raise UsageError(f"grid {name!r} has no runnable cell: {'; '.join(n for g in grids for n in g.notes)}")
    tuned, tuned_notes = tuned_values(Path(tuned_runs), scale) if tuned_runs else (None, [])
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    records = run_many(seeded(grids, seeds), out, Options(data_root=data_root, reuse=True, keep_going=True), jobs, log)
    command = f"repbench ablate --grid {name} --seeds {seeds} --scale {scale_name}"
    command += f" --tuned {tuned_runs}" if tuned_runs else ""
    parts = [write_grid_report(g, runs_frame(g, seeds, records), out, scale, tuned, tuned_notes, command)
             for g in grids if g.cells]
    text = "\n".join(parts)
    if name in COMPOSITES:
        atomic_write_bytes(Path(out) / f"{name}.md", text.encode())
    log(f"{len(records)} run(s) in {time.perf_counter() - t0:.0f} s; tables under {out}")
    return text


def runs_frame(grid: Grid, seeds: int, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for cell in grid.cells:
        for s in range(seeds):
            cfg = replace(cell.config, seed=s)
            rec = records[cfg.run_id()]
            rows.append({"grid": grid.name, "method": cell.method, "cell": cell.label, "recipe": cfg.recipe_name,
                         "seed": s, "status": rec.get("status", "ok"), "value": metric_of(rec),
                         "run_id": cfg.run_id(), "error": rec.get("error", ""),
                         "git_sha": rec.get("provenance", {}).get("git_sha", "")})
    return pd.DataFrame(rows)


def cells_markdown(table: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "method": table["method"], "cell": table["cell"], "n": table["n"],
        "kNN top-1 %": [pct(m) for m in table["mean"]],
        "95% bootstrap CI": [interval(lo, hi) for lo, hi in zip(table["ci_lo"], table["ci_hi"], strict=True)],
        "± t95": [pct(t) for t in table["t95"]],
        "flags": table["flags"],
    })
    return shown.to_markdown(index=False)


def tuned_values(tuned_runs: Path, scale: Scale) -> tuple[dict[str, list[float]], list[str]]:
    """Per-method test scores of ``repbench search`` re-runs (recipe ``tuned``) made at this scale."""
    values: dict[str, list[float]] = {}
    skipped = 0
    for r in load_records(tuned_runs):
        c = r["config"]
        if c.get("recipe_name") != "tuned":
            continue
        same = (c["dataset"], c["per_class"], c["test_per_class"], c["epochs"], c["backbone"]) == (
            scale.dataset, scale.per_class, scale.test_per_class, scale.epochs, backbone_for(c["method"], scale.backbone))
        if not same:
            skipped += 1
            continue
        values.setdefault(c["method"], []).append(metric_of(r))
    notes = [f"{skipped} tuned record(s) under {tuned_runs} were made at another scale and are not used"] if skipped else []
    return values, notes


RECIPE_TEXT = {"recipe": "each method under its paper recipe and under the unified recipe",
               "paper": "the method's paper recipe (optimizer, base lr, weight decay, warm-up), as its paper ablated",
               "unified": f"the unified recipe ({UNIFIED_RECIPE.optimizer}, lr {UNIFIED_RECIPE.lr:g} x batch/256, "
                          f"wd {UNIFIED_RECIPE.weight_decay:g}, {UNIFIED_RECIPE.schedule})"}


def write_grid_report(grid: Grid, df: pd.DataFrame, out: Path, scale: Scale,
                      tuned: dict[str, list[float]] | None = None, tuned_notes: list[str] | None = None,
                      command: str = "") -> str:
    gdir = Path(out) / grid.name
    table = cell_table(df, ["method", "cell"])
    atomic_write_bytes(gdir / "runs.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(gdir / "table.csv", table.to_csv(index=False).encode())
    plot_cells(table.assign(label=table["method"] + ": " + table["cell"]), "label", gdir / f"{grid.name}.png",
               f"{grid.name} ({scale.dataset}, {scale.epochs} epochs)")
    seeds = int(df.groupby(["method", "cell"])["seed"].count().min()) if len(df) else 0
    text = [f"## Ablation grid `{grid.name}`", "",
            f"Scale `{scale.name}`: {scale.dataset}, {scale.per_class or 'all'} train / {scale.test_per_class or 'all'} "
            f"test images per class, {scale.epochs} epoch(s), batch {scale.batch_size}, {scale.backbone}; "
            f"{RECIPE_TEXT.get(grid.name, RECIPE_TEXT[grid.recipe])}; test-split kNN top-1 (k=20, cosine, weighted); "
            f"{seeds} seeds per cell. Mean, 95% BCa bootstrap interval over seeds (scipy.stats.bootstrap) and, for "
            "comparison, the t-interval half-width; n counts scored seeds. Flags count runs the loop marked diverged "
            "(not scored) or collapsed (scored as measured).", "", f"Command: `{command}`" if command else "",
            "", cells_markdown(table), "", f"![{grid.name}]({grid.name}.png)", ""]
    text += [f"- note: {n}" for n in grid.notes]
    if grid.name == "recipe":
        text += recipe_section(df, gdir, tuned, tuned_notes)
    body = "\n".join(text) + "\n"
    atomic_write_bytes(gdir / "table.md", body.encode())
    return body


def recipe_section(df: pd.DataFrame, gdir: Path, tuned: dict[str, list[float]] | None,
                   tuned_notes: list[str] | None) -> list[str]:
    """The method-vs-engineering table of the recipe grid (paper / unified / tuned recipes)."""
    values: dict[tuple[str, str], list[float]] = {}
    for (m, r), g in df.groupby(["method", "recipe"]):
        values[(m, r)] = g["value"].tolist()
    for m, v in (tuned or {}).items():
        if (m, "unified") in values:
            values[(m, "tuned")] = v
    mve = method_vs_engineering(values)
    atomic_write_bytes(gdir / "method_vs_engineering.csv", mve.to_csv(index=False).encode())
    text = ["", "### Method vs engineering", "",
            "Gap = mean(A) - mean(B) in points of test kNN top-1, with a 95% percentile bootstrap interval "
            "(seeds resampled per method); A is the winner under the paper recipes. Recipe share = "
            "(gap paper - gap unified) / gap paper: the part of the paper-recipe gap that equal "
            "engineering removes; n.s. when the paper-recipe gap's interval contains 0. Tuned: each method's "
            "best `repbench search` configuration (same trial budget for every method), re-run with fresh seeds"
            + ("." if tuned else " (not given: pass --tuned RUNS from 'repbench search --methods all')."),
            "", method_vs_engineering_markdown(mve)]
    return text + [f"- note: {n}" for n in tuned_notes or []]
