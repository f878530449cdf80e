"""Ablation grids: each a list of cells (a RunConfig made by ``dataclasses.replace``), run with >= 3 seeds.

``repbench ablate --grid NAME [--seeds K] [--scale quick|collapse|smoke] [--out DIR] [--tuned RUNS]``. Grids:

- the ablations the methods' papers ran, declared in each method's file (``Method.ablations``, each with its claim
  and source): simclr-head (SimCLR Fig. 8), simclr-temperature (SimCLR Table 5), moco-momentum (MoCo v1 Sec. 4.1),
  dino-centering (DINO Sec. 5.3 / Fig. 7), simsiam-stopgrad (SimSiam Fig. 2), byol-predictor (BYOL Table 5a),
  mae-mask-ratio (MAE Fig. 5); they run under that paper's recipe, as it did. The collapse claims run at the
  ``collapse`` scale (4x the quick steps); results and verdicts: results/ablations/README.md;
- ``recipe``: every trainable method under its paper recipe and under the shared unified recipe;
- ``augment``: crop only / + colour / + blur / + solarize, for every method exposing those knobs;
- ``batch``: batch size sweep for the methods whose negatives come from the batch or a queue;
- ``floors``: the methods that do not train (raw pixels, random init), the level every cell is read against;
- ``smoke``: two SimCLR head cells on digits, for the tests;
- ``quick-ablation``: at the quick scale, 3 seeds: the floors, the recipe grid for the methods of the quick
  budget (``Method.quick_budget``) and the headline cells of the three paper grids: 57 training runs and 6
  floor runs. Fashion-MNIST, 100 train and 100 test images per class, 6 epochs at batch 64 (96 steps); every
  protocol is recorded, the tables read kNN. The same runs are the ``quick-ablation`` suite of ``repbench run``.

Cells that share a configuration (e.g. SimCLR's default under its paper recipe is in recipe and simclr-head)
share one run: records live under ``<out>/runs/ablate-<scale>/<run-id>`` and are reused when present.
Statistics and tables: bench/experiments/ablate_report.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.experiments.scales import SCALES, Scale, scaled_config, trainable_methods
from methods import METHODS
from methods.spec import Ablation

MIN_SEEDS = 3


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
        if method not in METHODS:
            self.notes.append(f"{method} is not registered: cell {label!r} skipped")
            return
        defaults = vars(METHODS.get(method).Config())
        missing = sorted(set(method_args) - set(defaults))
        if missing:
            self.notes.append(f"{method}.Config has no {', '.join(missing)}: cell {label!r} skipped")
            return
        # Defaults are left out, so a cell equal to another grid's (e.g. SimCLR's MLP head) shares its run.
        args = {k: v for k, v in method_args.items() if defaults[k] != v}
        config = scaled_config(scale, method, recipe or self.recipe, method_args=args, suite=f"ablate-{scale.name}")
        self.cells.append(Cell(self.name, method, label, config))


def method_ablations() -> dict[str, tuple[str, Ablation]]:
    """Every ablation a method file declares: grid name -> (method, ablation)."""
    return {grid: (name, abl) for name, cls in METHODS.items() for grid, abl in cls.ablations.items()}


def paper_grid(grid: str, scale: Scale) -> Grid:
    method, abl = method_ablations()[grid]
    g = Grid(grid, recipe=abl.recipe)
    for c in abl.cells:
        g.add(scale, method, c.label, **c.args)
    return g


def recipe_grid(scale: Scale) -> Grid:
    g = Grid("recipe")
    for m in trainable_methods():
        g.add(scale, m, "paper", recipe="paper")
        g.add(scale, m, "unified")
    return g


def floors(scale: Scale) -> Grid:
    """What no training gives at this scale (raw pixels, a randomly initialised backbone): read every cell against it."""
    g = Grid("floors")
    for name, cls in METHODS.items():
        if cls.trained_by == "none":
            g.add(scale, name, "no training")
    return g


def _zero_like(value: Any) -> Any:
    return tuple(0.0 for _ in value) if isinstance(value, tuple) else 0.0


def augment(scale: Scale) -> Grid:
    """Cumulative: crop (+flip) only, + colour jitter, + blur, + solarize, each at the method's own strength.

    Grayscale is not a cell: no method Config exposes it, and it is a no-op on single-channel data.
    """
    g = Grid("augment")
    g.notes.append("grayscale: no method Config has a gray_p knob, and grayscale is a no-op on 1-channel images")
    for m in trainable_methods():
        cfg = vars(METHODS.get(m).Config())
        if "jitter_strength" not in cfg:
            continue
        steps = [("jitter_strength", "+ colour", cfg["jitter_strength"] or 0.5)]
        for knob, label in (("blur_p", "+ blur"), ("solarize_p", "+ solarize")):
            if knob in cfg and cfg[knob] != _zero_like(cfg[knob]):
                steps.append((knob, label, cfg[knob]))
        args = {knob: _zero_like(cfg[knob]) for knob, _, _ in steps}
        g.add(scale, m, "crop only", **args)
        for knob, label, value in steps:
            args = {**args, knob: value}
            g.add(scale, m, label, **args)
    return g


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


def smoke(scale: Scale) -> Grid:
    """Two cells of simclr-head under the unified recipe: the tests' grid (run_ablation gives it the smoke scale)."""
    g = Grid("smoke")
    for c in paper_grid("simclr-head", scale).cells:
        if c.label in ("head=none", "head=mlp"):
            g.add(scale, c.method, c.label, **c.config.method_args)
    return g


GRIDS: dict[str, Callable[[Scale], Grid]] = {"recipe": recipe_grid, "floors": floors, "augment": augment,
                                             "batch": batch, "smoke": smoke}
# A composite runs parts of several grids: (grid, methods kept or None, cell labels kept or None); None for the
# methods of the recipe grid means the quick budget's.
COMPOSITES: dict[str, tuple[tuple[str, tuple[str, ...] | None, tuple[str, ...] | None], ...]] = {
    "quick-ablation": (
        ("floors", None, None),
        ("recipe", None, None),
        ("simclr-head", None, ("head=none", "head=linear", "head=mlp")),
        ("moco-momentum", None, ("momentum=0.0", "momentum=0.9", "momentum=0.99", "momentum=0.999")),
        ("dino-centering", None, ("center+sharpen (paper)", "no centering", "no sharpening")),
    ),
}


def quick_methods() -> tuple[str, ...]:
    return tuple(name for name, cls in METHODS.items() if cls.quick_budget)


def grid_names() -> list[str]:
    return sorted([*GRIDS, *method_ablations(), *COMPOSITES])


def build_one(name: str, scale: Scale) -> Grid:
    if name in GRIDS:
        return GRIDS[name](scale)
    if name in method_ablations():
        return paper_grid(name, scale)
    close = difflib.get_close_matches(name, grid_names(), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown ablation grid {name!r}.{hint} Choose one of: {', '.join(grid_names())}.")


def build(name: str, scale: Scale) -> list[Grid]:
    if name not in COMPOSITES:
        return [build_one(name, scale)]
    grids = []
    for grid, keep_methods, keep_labels in COMPOSITES[name]:
        g = build_one(grid, scale)
        keep_methods = quick_methods() if grid == "recipe" and keep_methods is None else keep_methods
        g.cells = [c for c in g.cells if (keep_methods is None or c.method in keep_methods)
                   and (keep_labels is None or c.label in keep_labels)]
        grids.append(g)
    return grids


def seeded(grids: list[Grid], seeds: int) -> list[RunConfig]:
    """Every distinct config of the grids, for seeds 0..seeds-1 (shared cells run once)."""
    out: dict[str, RunConfig] = {}
    for g in grids:
        for cell in g.cells:
            for s in range(seeds):
                cfg = replace(cell.config, seed=s)
                out.setdefault(cfg.run_id(), cfg)
    return list(out.values())


def quick_ablation_suite() -> list[RunConfig]:
    """The runs of ``repbench ablate --grid quick-ablation`` (see the module docstring for cells and budget).

    ``repbench ablate --grid quick-ablation`` runs the same configs (reusing any records already present)
    and adds the statistics tables and plots.
    """
    return seeded(build("quick-ablation", SCALES["quick"]), MIN_SEEDS)


def check_seeds(seeds: int) -> None:
    if seeds < MIN_SEEDS:
        raise UsageError(f"--seeds {seeds}: every cell needs at least {MIN_SEEDS} seeds for an interval")

