"""Running an ablation and its tables: mean, 95% interval and n scored / n run per cell, paired differences between
the cells of a method, the method-vs-engineering table of the recipe grid, one PNG per grid (bench/stats.py).

Every table is remade from the committed ``<grid>/runs.csv`` (and ``recipe/tuned.csv``) by ``rewrite_reports``."""

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
from bench.experiments.ablate_signals import signals_frame, signals_markdown
from bench.experiments.scales import SCALES, Scale, backbone_for, metric_of
from bench.report import aggregate, flatten, load_records
from bench.report import markdown as report_markdown
from bench.runner import Options, run_many
from bench.stats import (
    MIN_BCA_SEEDS,
    Scores,
    cell_differences,
    cell_table,
    differences_markdown,
    interval,
    method_vs_engineering,
    method_vs_engineering_markdown,
    pct,
    plot_cells,
)
from bench.store import atomic_write_bytes
from methods.spec import UNIFIED_RECIPE


def run_ablation(name: str, seeds: int, out: Path, scale_name: str = "quick", data_root: str | None = None,
                 tuned_runs: Path | None = None, log: Callable[[str], None] | None = None, jobs: int = 1,
                 backbone: str | None = None) -> str:
    check_seeds(seeds)
    if scale_name not in SCALES:
        raise UsageError(f"unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}")
    scale = SCALES["smoke"] if name == "smoke" else SCALES[scale_name]
    scale = replace(scale, backbone=backbone) if backbone else scale
    grids = build(name, scale)
    if not any(g.cells for g in grids):
        raise UsageError(f"grid {name!r} has no runnable cell: {'; '.join(n for g in grids for n in g.notes)}")
    tuned, tuned_notes = tuned_values(Path(tuned_runs), scale) if tuned_runs else (None, [])
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    records = run_many(seeded(grids, seeds), out, Options(data_root=data_root, reuse=True, keep_going=True), jobs, log)
    command = f"repbench ablate --grid {name} --seeds {seeds} --scale {scale_name}"
    command += f" --tuned {tuned_runs}" if tuned_runs else ""
    command += f" --backbone {backbone}" if backbone else ""
    frames = [(g, runs_frame(g, seeds, records)) for g in grids if g.cells]
    parts = [write_grid_report(g, runs, out, scale, tuned, tuned_notes, command)
             + signals_section(runs, records, Path(out) / g.name) for g, runs in frames]
    text = "\n".join(parts)
    if name in COMPOSITES:
        atomic_write_bytes(Path(out) / f"{name}.md", text.encode())
    log(f"{len(records)} run(s) in {time.perf_counter() - t0:.0f} s; tables under {out}")
    return text


def run_user_grid(grid: Grid, seeds: int, out: Path, scale: Scale, data_root: str | None = None,
                  log: Callable[[str], None] | None = None, jobs: int = 1, command: str = "") -> str:
    """Run a grid of ``repbench ablate --vary`` / ``--grid-file`` (bench/experiments/user_grid.py): the tables of a
    built-in grid, then every protocol's mean per cell."""
    check_seeds(seeds)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    records = run_many(seeded([grid], seeds), out, Options(data_root=data_root, reuse=True, keep_going=True), jobs, log)
    runs = runs_frame(grid, seeds, records)
    text = write_grid_report(grid, runs, out, scale, command=command) + signals_section(runs, records, Path(out) / grid.name)
    by_cell = [{**records[replace(c.config, seed=s).run_id()], "cell": c.label} for c in grid.cells for s in range(seeds)]
    text += protocols_section(by_cell, Path(out) / grid.name)
    log(f"{len(records)} run(s) in {time.perf_counter() - t0:.0f} s; tables under {Path(out) / grid.name}")
    return text


def protocols_section(records: list[dict[str, Any]], gdir: Path) -> str:
    """Every protocol's mean ± 95% CI per cell (bench/report.py's table, a row per cell), appended to table.md."""
    df = flatten(records).assign(variant=[r["cell"] for r in records])
    body = ("\n### Every protocol\n\nMean ± 95% CI (t-interval) over seeds per cell; seeds: scored / run.\n\n"
            + report_markdown(aggregate(df)) + "\n")
    atomic_write_bytes(gdir / "table.md", ((gdir / "table.md").read_text() + body).encode())
    return body


def signals_section(runs: pd.DataFrame, records: dict[str, dict[str, Any]], gdir: Path) -> str:
    """signals.csv beside runs.csv, and the collapse signals per cell appended to table.md."""
    frame = signals_frame(runs, records)
    atomic_write_bytes(gdir / "signals.csv", frame.to_csv(index=False).encode())
    body = ("\n### Collapse signals\n\nEach run's last recorded epoch (bench/collapse.py; per run in signals.csv): "
            "mean over seeds, and in brackets the paired difference from the method's first cell with its 95% "
            f"interval (t; BCa from {MIN_BCA_SEEDS} pairs). flagged: runs the watchdog stopped as collapsed.\n\n"
            + signals_markdown(frame) + "\n")
    atomic_write_bytes(gdir / "table.md", ((gdir / "table.md").read_text() + body).encode())
    return body


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
        "method": table["method"], "cell": table["cell"],
        "n scored / run": [f"{n}/{r}" for n, r in zip(table["n"], table["seeds"], strict=True)],
        "kNN top-1 %": [pct(m) for m in table["mean"]],
        "95% CI": [interval(lo, hi) for lo, hi in zip(table["ci_lo"], table["ci_hi"], strict=True)],
        "CI": table["ci"], "flags": table["flags"],
    })
    return shown.to_markdown(index=False)


def tuned_values(tuned_runs: Path, scale: Scale) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Per-method {seed: test score} of ``repbench search`` re-runs (recipe ``tuned``) made at this scale."""
    values: dict[str, dict[int, float]] = {}
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
        values.setdefault(c["method"], {})[c["seed"]] = metric_of(r)
    notes = [f"{skipped} tuned record(s) under {tuned_runs} were made at another scale and are not used"] if skipped else []
    return values, notes


Tuned = dict[str, Scores]  # method -> {seed: score}; a plain list where the seeds were lost (never paired)


def tuned_frame(tuned: Tuned) -> pd.DataFrame:
    rows = [{"method": m, "seed": s, "value": v} for m, vals in tuned.items()
            for s, v in (vals.items() if isinstance(vals, dict) else zip([None] * len(vals), vals, strict=True))]
    return pd.DataFrame(rows, columns=["method", "seed", "value"])


def read_tuned(path: Path) -> Tuned:
    """recipe/tuned.csv back: {seed: score} per method, a list for a method whose rows have no seed."""
    df = pd.read_csv(path)
    return {m: g["value"].tolist() if g["seed"].isna().any() else dict(zip(g["seed"].astype(int), g["value"], strict=True))
            for m, g in df.groupby("method", sort=False)}


def rewrite_reports(out: Path, name: str, scale_name: str = "quick", command: str = "") -> str:
    """Remake every table of grid ``name`` under ``out`` from its committed runs.csv (and recipe/tuned.csv), no run."""
    out = Path(out)
    scale = SCALES["smoke"] if name == "smoke" else SCALES[scale_name]
    command = command or f"repbench ablate --grid {name} --seeds 3 --scale {scale.name}"
    parts = []
    for g in build(name, scale):
        runs = out / g.name / "runs.csv"
        if not g.cells or not runs.exists():
            continue
        tuned_csv = out / g.name / "tuned.csv"
        tuned = read_tuned(tuned_csv) if g.name == "recipe" and tuned_csv.exists() else None
        g.notes.append(f"tables remade from the committed runs.csv: `python -c \"from bench.experiments.ablate_report "
                       f"import rewrite_reports; rewrite_reports('{out}', '{name}')\"`")
        parts.append(write_grid_report(g, pd.read_csv(runs), out, scale, tuned, None, command))
    if not parts:
        raise UsageError(f"no runs.csv of grid {name!r} under {out}; run 'repbench ablate --grid {name}' first")
    text = "\n".join(parts)
    if name in COMPOSITES:
        atomic_write_bytes(out / f"{name}.md", text.encode())
    return text


RECIPE_TEXT = {"recipe": "each method under its paper recipe and under the unified recipe",
               "paper": "the method's paper recipe (optimizer, base lr, weight decay, warm-up), as its paper ablated",
               "unified": f"the unified recipe ({UNIFIED_RECIPE.optimizer}, lr {UNIFIED_RECIPE.lr:g} x batch/256, "
                          f"wd {UNIFIED_RECIPE.weight_decay:g}, {UNIFIED_RECIPE.schedule})"}


def write_grid_report(grid: Grid, df: pd.DataFrame, out: Path, scale: Scale, tuned: Tuned | None = None,
                      tuned_notes: list[str] | None = None, command: str = "") -> str:
    gdir = Path(out) / grid.name
    table = cell_table(df, ["method", "cell"])
    diffs = cell_differences(df)
    atomic_write_bytes(gdir / "runs.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(gdir / "table.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(gdir / "differences.csv", diffs.to_csv(index=False).encode())
    plot_cells(table.assign(label=table["method"] + ": " + table["cell"]), "label", gdir / f"{grid.name}.png",
               f"{grid.name} ({scale.dataset}, {scale.epochs} epochs)")
    seeds = int(df.groupby(["method", "cell"])["seed"].count().min()) if len(df) else 0
    text = [f"## Ablation grid `{grid.name}`", "",
            f"Scale `{scale.name}`: {scale.dataset}, {scale.per_class or 'all'} train / {scale.test_per_class or 'all'} "
            f"test images per class, {scale.epochs} epoch(s), batch {scale.batch_size}, {scale.backbone}; "
            f"{RECIPE_TEXT.get(grid.name, RECIPE_TEXT[grid.recipe])}; test-split kNN top-1 (k=20, cosine, weighted); "
            f"{seeds} seeds per cell. Mean and 95% interval over the scored seeds: Student's t (CI `t`; a BCa "
            f"bootstrap, `BCa`, only from {MIN_BCA_SEEDS} scored seeds, as fewer cap it at their range); n scored / "
            "run: seeds with a score / seeds run. Flags count runs the loop marked diverged (not scored) or "
            "collapsed (scored as measured).", "", f"Command: `{command}`" if command else "",
            "", cells_markdown(table), "", f"![{grid.name}]({grid.name}.png)", "",
            "Paired differences (A - B per seed over the seeds both cells scored, 95% interval of their mean: t, "
            f"BCa from {MIN_BCA_SEEDS} pairs; resolved when it excludes 0, else n.s.; Welch's unpaired t only where "
            "two cells share no seed):", "",
            differences_markdown(diffs), ""]
    text += [f"- note: {n}" for n in grid.notes]
    if grid.name == "recipe":
        text += recipe_section(df, gdir, tuned, tuned_notes)
    body = "\n".join(text) + "\n"
    atomic_write_bytes(gdir / "table.md", body.encode())
    return body


def recipe_section(df: pd.DataFrame, gdir: Path, tuned: Tuned | None,
                   tuned_notes: list[str] | None) -> list[str]:
    """The method-vs-engineering table of the recipe grid (paper / unified / tuned recipes)."""
    values: dict[tuple[str, str], Scores] = {}
    for (m, r), g in df.groupby(["method", "recipe"]):
        values[(m, r)] = dict(zip(g["seed"], g["value"], strict=True))
    for m, v in (tuned or {}).items():
        if (m, "unified") in values:
            values[(m, "tuned")] = v
    if tuned:
        atomic_write_bytes(gdir / "tuned.csv", tuned_frame(tuned).to_csv(index=False).encode())
    mve = method_vs_engineering(values)
    atomic_write_bytes(gdir / "method_vs_engineering.csv", mve.to_csv(index=False).encode())
    text = ["", "### Method vs engineering", "",
            "Gap = A - B in points of test kNN top-1, paired by seed (the mean of the per-seed differences over the "
            f"seeds both scored, n pairs beside it), with its 95% interval (t; BCa from {MIN_BCA_SEEDS} pairs) and "
            "verdict (resolved: the interval excludes 0); (Welch): unpaired, where the two share no seed. A is the "
            "winner under the paper "
            "recipes. Recipe share = (gap paper - gap unified) / gap paper: the part of the paper-recipe gap "
            "that equal engineering removes; n.s. when the paper-recipe gap is n.s. Tuned: each method's best "
            "`repbench search` configuration (same trial budget for every method), re-run with fresh seeds"
            + ("." if tuned else " (not given: pass --tuned RUNS from 'repbench search --methods all')."),
            "", method_vs_engineering_markdown(mve)]
    unseeded = sorted(m for m, v in (tuned or {}).items() if not isinstance(v, dict))
    if unseeded:
        tuned_notes = [*(tuned_notes or []), f"recipe/tuned.csv gives no seeds for {', '.join(unseeded)}: their tuned "
                       "gaps cannot be paired and are Welch intervals"]
    return text + [f"- note: {n}" for n in tuned_notes or []]
