"""Ablation grids: each a list of cells (a RunConfig made by ``dataclasses.replace``), run with >= 3 seeds.

``repbench ablate --grid NAME [--seeds K] [--scale quick|smoke] [--out DIR] [--tuned RUNS]``. Grids:

- ``recipe``: every trainable method under its paper recipe and under the shared unified recipe;
- ``simclr-head``: SimCLR's projection head none / linear / MLP, and its temperature;
- ``moco-momentum``: MoCo v1's key-encoder momentum 0 / 0.9 / 0.99 / 0.999, and its queue size;
- ``dino-centering``: DINO with and without centering and sharpening, and without multi-crop;
- ``augment``: crop only / + colour / + blur / + solarize, for every method exposing those knobs;
- ``batch``: batch size sweep for SimCLR (negatives from the batch) vs MoCo v2 (negatives from the queue);
- ``floors``: the methods that do not train (raw pixels, random init), the level every cell is read against;
- ``smoke``: two SimCLR cells on digits, for the tests;
- ``quick-ablation``: at the quick scale, 3 seeds: the floors, the recipe grid for ``QUICK_METHODS``
  (SimCLR, MoCo v1/v2, BYOL, DINO, supervised) and the headline cells of simclr-head (none / linear / MLP),
  moco-momentum (0 / 0.9 / 0.99 / 0.999) and dino-centering (paper / no centering / no sharpening):
  57 training runs and 6 floor runs. Fashion-MNIST, 100 train and 100 test images per class, 6 epochs at
  batch 64 (96 steps); every protocol is recorded, the tables read kNN. Budget: about 25 minutes of CPU
  time with one thread, so under 30 minutes on 2 free cores (``--jobs 2`` with OMP_NUM_THREADS=1 halves the
  wall clock; a loaded machine stretches it).
  The same runs are the ``quick-ablation`` suite of ``repbench run``.

The three grids that repeat a paper's ablation (simclr-head, moco-momentum, dino-centering) run under
that paper's recipe, as the paper did; recipe, augment and batch compare methods under the unified one.
Cells that share a configuration (e.g. SimCLR's default under its paper recipe is in recipe and simclr-head)
share one run: records live under ``<out>/runs/ablate-<scale>/<run-id>`` and are reused when present.
Statistics: bench/stats.py (mean, 95% bootstrap CI, n seeds per cell; method-vs-engineering table).
"""

from __future__ import annotations

import difflib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

import methods
from bench.config import UNIFIED_RECIPE, RunConfig
from bench.errors import UsageError
from bench.registry import Registry
from bench.suites import SUITES

METRIC = "knn"  # result key scored everywhere: weighted cosine k-NN, k=20 (protocols/knn.py)
MIN_SEEDS = 3


@dataclass(frozen=True)
class Scale:
    """Data and budget shared by every run of an ablation or a search at this scale."""

    name: str
    dataset: str
    per_class: int | None
    test_per_class: int | None
    epochs: int
    batch_size: int
    backbone: str = "convnet"


SCALES = {
    # Tests: 30 train / 10 test digits per class (300 / 100 images), one epoch; seconds per run.
    "smoke": Scale("smoke", "digits", 30, 10, epochs=1, batch_size=64),
    "quick": Scale("quick", "fashion-mnist", 100, 100, epochs=6, batch_size=64),
}


@dataclass(frozen=True)
class Cell:
    grid: str
    method: str
    label: str
    config: RunConfig  # seed 0; the runner sets each seed


@dataclass
class Grid:
    name: str
    recipe: str = "unified"  # the recipe of the grid's cells; paper-ablation grids use the paper's
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, scale: Scale, method: str, label: str, recipe: str | None = None, **method_args: Any) -> None:
        """Add a cell, or a note when the method is not registered or lacks one of the knobs."""
        if method not in methods.METHODS:
            self.notes.append(f"{method} is not registered: cell {label!r} skipped")
            return
        default = methods.METHODS.get(method).Config()
        missing = sorted(set(method_args) - {f.name for f in fields(default)})
        if missing:
            self.notes.append(f"{method}.Config has no {', '.join(missing)}: cell {label!r} skipped")
            return
        # Defaults are left out, so a cell equal to another grid's (e.g. SimCLR's MLP head) shares its run.
        method_args = {k: v for k, v in method_args.items() if getattr(default, k) != v}
        self.cells.append(Cell(self.name, method, label, base_config(scale, method, recipe or self.recipe, method_args)))


def base_config(scale: Scale, method: str, recipe: str = "unified", method_args: dict | None = None) -> RunConfig:
    cls = methods.METHODS.get(method)
    backbone = getattr(cls, "required_backbone", scale.backbone)  # e.g. MAE exists only on a ViT
    return RunConfig(method=method, dataset=scale.dataset, backbone=backbone, epochs=scale.epochs,
                     batch_size=scale.batch_size, seed=0, recipe=cls.paper_recipe if recipe == "paper" else UNIFIED_RECIPE,
                     recipe_name=recipe, method_args=dict(method_args or {}), per_class=scale.per_class,
                     test_per_class=scale.test_per_class, suite=f"ablate-{scale.name}")


def trainable_methods() -> list[str]:
    return [m for m in methods.METHODS.names()
            if methods.METHODS.get(m).trainable and not methods.METHODS.get(m).fits_without_sgd]


GRIDS: Registry[Callable[[Scale], Grid]] = Registry("ablation grid")
# The methods of the quick budget (recipe grid and search): the ones whose papers' ablations are repeated,
# plus the supervised reference; every other method joins the full `recipe` grid.
QUICK_METHODS = ("simclr", "moco-v1", "moco-v2", "byol", "dino", "supervised")
# A composite runs parts of several grids: (grid, methods kept or None, cell labels kept or None).
COMPOSITES: dict[str, tuple[tuple[str, tuple[str, ...] | None, tuple[str, ...] | None], ...]] = {
    "quick-ablation": (
        ("floors", None, None),
        ("recipe", QUICK_METHODS, None),
        ("simclr-head", None, ("head=none", "head=linear", "head=mlp")),
        ("moco-momentum", None, ("momentum=0.0", "momentum=0.9", "momentum=0.99", "momentum=0.999")),
        ("dino-centering", None, ("center+sharpen (paper)", "no centering", "no sharpening")),
    ),
}


@GRIDS.register("recipe")
def recipe_grid(scale: Scale) -> Grid:
    g = Grid("recipe")
    for m in trainable_methods():
        g.add(scale, m, "paper", recipe="paper")
        g.add(scale, m, "unified")
    return g


@GRIDS.register("floors")
def floors(scale: Scale) -> Grid:
    """What no training gives at this scale (raw pixels, a randomly initialised backbone): read every cell against it."""
    g = Grid("floors")
    for m in methods.METHODS.names():
        if not methods.METHODS.get(m).trainable:
            g.add(scale, m, "no training")
    return g


@GRIDS.register("simclr-head")
def simclr_head(scale: Scale) -> Grid:
    """Chen et al. 2020 Fig. 8: nonlinear head > linear > none (by > 10 points of linear eval)."""
    g = Grid("simclr-head", recipe="paper")
    for head in ("none", "linear", "mlp"):
        g.add(scale, "simclr", f"head={head}", head=head)
    for t in (0.1, 0.2, 1.0):
        g.add(scale, "simclr", f"head=mlp T={t}", temperature=t)
    return g


@GRIDS.register("moco-momentum")
def moco_momentum(scale: Scale) -> Grid:
    """He et al. 2020 Sec. 4.1: momentum 0 fails to train (loss oscillates); 0.99-0.999 work best."""
    g = Grid("moco-momentum", recipe="paper")
    for m in (0.0, 0.9, 0.99, 0.999):
        g.add(scale, "moco-v1", f"momentum={m}", momentum=m)
    for q in (0, 256):
        g.add(scale, "moco-v1", f"queue={q}" + (" (in-batch)" if q == 0 else ""), queue_size=q)
    return g


@GRIDS.register("dino-centering")
def dino_centering(scale: Scale) -> Grid:
    """Caron et al. 2021 Table 8 / Fig. 7: centering alone or sharpening alone collapses; both are needed.

    Centering off is ``center_momentum=1``: the center is a zero buffer that then never moves.
    Sharpening off sets the teacher temperature (and its warm-up start) to the student's 0.1.
    """
    g = Grid("dino-centering", recipe="paper")
    student_t = methods.METHODS.get("dino").Config().student_temp if "dino" in methods.METHODS else 0.1
    no_sharpen = {"teacher_temp": student_t, "warmup_teacher_temp": student_t}
    g.add(scale, "dino", "center+sharpen (paper)")
    g.add(scale, "dino", "no centering", center_momentum=1.0)
    g.add(scale, "dino", "no sharpening", **no_sharpen)
    g.add(scale, "dino", "neither", center_momentum=1.0, **no_sharpen)
    g.add(scale, "dino", "no multi-crop", n_local_crops=0)
    return g


def _zero_like(value: Any) -> Any:
    return tuple(0.0 for _ in value) if isinstance(value, tuple) else 0.0


@GRIDS.register("augment")
def augment(scale: Scale) -> Grid:
    """Cumulative: crop (+flip) only, + colour jitter, + blur, + solarize, each at the method's own strength.

    Grayscale is not a cell: no method Config exposes it, and it is a no-op on single-channel data.
    """
    g = Grid("augment")
    g.notes.append("grayscale: no method Config has a gray_p knob, and grayscale is a no-op on 1-channel images")
    for m in trainable_methods():
        cfg = methods.METHODS.get(m).Config()
        have = {f.name for f in fields(cfg)}
        if "jitter_strength" not in have:
            continue
        steps = [("jitter_strength", "+ colour", cfg.jitter_strength or 0.5)]
        for knob, label in (("blur_p", "+ blur"), ("solarize_p", "+ solarize")):
            if knob in have and getattr(cfg, knob) != _zero_like(getattr(cfg, knob)):
                steps.append((knob, label, getattr(cfg, knob)))
        args = {knob: _zero_like(getattr(cfg, knob)) for knob, _, _ in steps}
        g.add(scale, m, "crop only", **args)
        for knob, label, value in steps:
            args = {**args, knob: value}
            g.add(scale, m, label, **args)
    return g


@GRIDS.register("batch")
def batch(scale: Scale) -> Grid:
    """SimCLR's negatives come from the batch (Chen et al. Fig. 9), MoCo's from the queue (He et al. Sec. 3.2)."""
    g = Grid("batch")
    for m in ("simclr", "moco-v2"):
        for b in (32, 64, 128, 256):
            before = len(g.cells)
            g.add(scale, m, f"batch={b}")
            if len(g.cells) > before:
                g.cells[-1] = replace(g.cells[-1], config=replace(g.cells[-1].config, batch_size=b))
    return g


@GRIDS.register("smoke")
def smoke(scale: Scale) -> Grid:
    g = Grid("smoke")
    for head in ("none", "mlp"):
        g.add(SCALES["smoke"], "simclr", f"head={head}", head=head)
    return g


def grid_names() -> list[str]:
    return sorted([*GRIDS.names(), *COMPOSITES])


def build(name: str, scale: Scale) -> list[Grid]:
    if name in COMPOSITES:
        grids = []
        for grid, keep_methods, keep_labels in COMPOSITES[name]:
            g = GRIDS.get(grid)(scale)
            g.cells = [c for c in g.cells if (keep_methods is None or c.method in keep_methods)
                       and (keep_labels is None or c.label in keep_labels)]
            grids.append(g)
        return grids
    if name not in GRIDS:
        close = difflib.get_close_matches(name, grid_names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown ablation grid {name!r}.{hint} Choose one of: {', '.join(grid_names())}.")
    return [GRIDS.get(name)(scale)]


def seeded(grids: list[Grid], seeds: int) -> list[RunConfig]:
    """Every distinct config of the grids, for seeds 0..seeds-1 (shared cells run once)."""
    out: dict[str, RunConfig] = {}
    for g in grids:
        for cell in g.cells:
            for s in range(seeds):
                cfg = replace(cell.config, seed=s)
                out.setdefault(cfg.run_id(), cfg)
    return list(out.values())


@SUITES.register("quick-ablation")
def quick_ablation_suite() -> list[RunConfig]:
    """The runs of ``repbench ablate --grid quick-ablation`` (see the module docstring for cells and budget).

    Fashion-MNIST, 100 train and 100 test images per class, 6 epochs, batch 64, seeds 0/1/2; every protocol
    is recorded, the tables read kNN.
    ``repbench ablate --grid quick-ablation`` runs the same configs (reusing any records already present)
    and adds the statistics tables and plots.
    """
    return seeded(build("quick-ablation", SCALES["quick"]), MIN_SEEDS)


# --------------------------------------------------------------------------- running


def metric_of(record: dict[str, Any]) -> float:
    entry = record.get("metrics", {}).get(METRIC, {})
    value = entry.get("top1") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def run_cached(cfg: RunConfig, out: Path, ds, data_root: str | None = None) -> dict[str, Any]:
    """The run's record: read back when ``record.json`` exists (same config, same key), else run it.

    A run that raises inside training or evaluation is returned as status ``error`` (not written, so a
    fixed bug reruns it); bad input (UsageError) still stops everything.
    """
    from bench.pipeline import run_dir_for, run_one
    from bench.store import read_json

    path = run_dir_for(cfg, out) / "record.json"
    if path.exists():
        return read_json(path)
    try:
        return run_one(cfg, out, data_root, progress=False, ds=ds)
    except UsageError:
        raise
    except (RuntimeError, ValueError, FloatingPointError) as err:
        return {"run_id": cfg.run_id(), "status": "error", "error": f"{type(err).__name__}: {err}",
                "config": cfg.to_dict(), "metrics": {}}


_DATA: dict = {}


def _dataset(cfg: RunConfig, data_root: str | None):
    """This process's copy of the config's dataset subset (one kept at a time)."""
    from bench.data import load_dataset

    key = (cfg.dataset, cfg.per_class, cfg.test_per_class, data_root)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class)
    return _DATA[key]


def _run_in_worker(cfg: RunConfig, out: Path, data_root: str | None) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    return run_cached(cfg, out, _dataset(cfg, data_root), data_root), time.perf_counter() - t


def run_configs(configs: list[RunConfig], out: Path, data_root: str | None = None,
                log: Callable[[str], None] | None = None, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Run (or read back) every config; returns {run_id: record}.

    ``jobs`` > 1 runs that many configs at once in worker processes (spawned, so each has its own torch
    threads: set OMP_NUM_THREADS, e.g. 1 thread x 2 jobs on 2 cores). Runs are independent and each writes
    only its own run folder, so the records are the same as with one job.
    """
    from bench.pipeline import validate

    for c in configs:
        validate(c)
    records: dict[str, dict[str, Any]] = {}

    def done(i: int, c: RunConfig, rec: dict[str, Any], secs: float) -> None:
        records[c.run_id()] = rec
        if log:
            log(f"[{i}/{len(configs)}] {c.run_id()} {rec.get('status')} {METRIC} {100 * metric_of(rec):.1f} ({secs:.1f} s)")

    if jobs <= 1:
        for i, c in enumerate(configs, 1):
            done(i, c, *_run_in_worker(c, out, data_root))
        return records
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, c, out, data_root): c for c in configs}
        for i, f in enumerate(as_completed(futures), 1):
            done(i, futures[f], *f.result())
    return records


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


# --------------------------------------------------------------------------- reporting


def cells_markdown(table: pd.DataFrame) -> str:
    from bench.stats import interval, pct

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
    from bench.report import load_records

    values: dict[str, list[float]] = {}
    skipped = 0
    for r in load_records(tuned_runs):
        c = r["config"]
        if c.get("recipe_name") != "tuned":
            continue
        backbone = getattr(methods.METHODS.get(c["method"]), "required_backbone", scale.backbone)
        same = (c["dataset"], c["per_class"], c["test_per_class"], c["epochs"], c["backbone"]) == (
            scale.dataset, scale.per_class, scale.test_per_class, scale.epochs, backbone)
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
    from bench.stats import cell_table, method_vs_engineering, method_vs_engineering_markdown, plot_cells
    from bench.store import atomic_write_bytes

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
        values: dict[tuple[str, str], list[float]] = {}
        for (m, r), g in df.groupby(["method", "recipe"]):
            values[(m, r)] = g["value"].tolist()
        for m, v in (tuned or {}).items():
            if (m, "unified") in values:
                values[(m, "tuned")] = v
        mve = method_vs_engineering(values)
        atomic_write_bytes(gdir / "method_vs_engineering.csv", mve.to_csv(index=False).encode())
        text += ["", "### Method vs engineering", "",
                 "Gap = mean(A) - mean(B) in points of test kNN top-1, with a 95% percentile bootstrap interval "
                 "(seeds resampled per method); A is the winner under the paper recipes. Recipe share = "
                 "(gap paper - gap unified) / gap paper: the part of the paper-recipe gap that equal "
                 "engineering removes; n.s. when the paper-recipe gap's interval contains 0. Tuned: each method's "
                 "best `repbench search` configuration (same trial budget for every method), re-run with fresh seeds"
                 + ("." if tuned else " (not given: pass --tuned RUNS from 'repbench search --methods all')."),
                 "", method_vs_engineering_markdown(mve)]
        text += [f"- note: {n}" for n in tuned_notes or []]
    body = "\n".join(text) + "\n"
    atomic_write_bytes(gdir / "table.md", body.encode())
    return body


def run_ablation(name: str, seeds: int, out: Path, scale_name: str = "quick", data_root: str | None = None,
                 tuned_runs: Path | None = None, log: Callable[[str], None] | None = None, jobs: int = 1) -> str:
    if seeds < MIN_SEEDS:
        raise UsageError(f"--seeds {seeds}: every cell needs at least {MIN_SEEDS} seeds for an interval")
    if scale_name not in SCALES:
        raise UsageError(f"unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}")
    scale = SCALES["smoke"] if name == "smoke" else SCALES[scale_name]
    grids = build(name, scale)
    if not any(g.cells for g in grids):
        raise UsageError(f"grid {name!r} has no runnable cell: {'; '.join(n for g in grids for n in g.notes)}")
    tuned, tuned_notes = tuned_values(Path(tuned_runs), scale) if tuned_runs else (None, [])
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    records = run_configs(seeded(grids, seeds), out, data_root, log, jobs)
    command = f"repbench ablate --grid {name} --seeds {seeds} --scale {scale_name}"
    command += f" --tuned {tuned_runs}" if tuned_runs else ""
    parts = [write_grid_report(g, runs_frame(g, seeds, records), out, scale, tuned, tuned_notes, command)
             for g in grids if g.cells]
    text = "\n".join(parts)
    if name in COMPOSITES:
        from bench.store import atomic_write_bytes

        atomic_write_bytes(Path(out) / f"{name}.md", text.encode())
    log(f"{len(records)} run(s) in {time.perf_counter() - t0:.0f} s; tables under {out}")
    return text
