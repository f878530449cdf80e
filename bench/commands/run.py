"""`repbench run`: one configuration, or a named suite, ending with its results table."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.commands import ddp_flags, launcher_flags, preset_flags, run_flags, train_flags
from bench.commands.args import float_range, int_range
from bench.commands.values import parse_pairs
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data.roots import image_size
from bench.experiments import SUITES
from bench.report import write_table
from bench.runner import Options, run_dir_for, run_many, validate
from bench.store import ensure_writable_dir
from methods import METHODS
from methods.spec import UNIFIED_RECIPE

# Flags that describe a single configuration; a suite fixes them itself.
SINGLE_RUN_FLAGS = ("method", "dataset", "backbone", "epochs", "batch_size", "lr", "weight_decay", "optimizer",
                    "seed", "recipe", "per_class", "test_per_class", "method_arg", "image_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", help="run a named suite (see 'repbench list suites'; default: one config from the flags)")
    p.add_argument("--method", help="method name (see 'repbench list methods'; no default)")
    p.add_argument("--dataset", help="dataset name (see 'repbench list datasets'; no default)")
    p.add_argument("--backbone", help="backbone name (default convnet)")
    p.add_argument("--epochs", type=int_range(1, 100_000), help="training epochs (default 1, or the preset's)")
    p.add_argument("--batch-size", type=int_range(2, 1 << 20), help="images per step, the GLOBAL batch under --nproc/torchrun "
                   "(each process takes 1/N of it; default 256, or the preset's)")
    p.add_argument("--lr", type=float_range(0, 100, open_lo=True),
                   help="base learning rate for batch 256 (default: the recipe's, 0.06 in the unified one)")
    p.add_argument("--weight-decay", type=float_range(0, 10), help="weight decay (default: the recipe's)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], help="optimizer (default: the recipe's)")
    p.add_argument("--recipe", choices=["unified", "paper"], help="shared recipe (default) or the method's paper recipe")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), help="seed of the run (default 0, or the config file's)")
    p.add_argument("--per-class", type=int_range(1), help="train on this many images per class (default all)")
    p.add_argument("--test-per-class", type=int_range(1), help="test on this many images per class (default all)")
    p.add_argument("--image-size", type=int_range(8, 1024),
                   help="decode or resize the dataset to this side in pixels (default $REPBENCH_IMAGE_SIZE, else the "
                        "dataset's own; folder trees 64)")
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE",
                   help="override a method option (repeatable; default: the method's, see 'repbench list methods -v')")
    p.add_argument("--protocols", help="comma-separated protocols (default: all registered)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when a GPU is visible, else cpu)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")
    p.add_argument("--out", default="results", help="results directory (default results/)")
    p.add_argument("--resume", action="store_true", help="continue from each run's last checkpoint (default off)")
    p.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms; same record twice on CPU "
                        "(default off)")
    p.add_argument("--knn-every", type=int_range(0, 100_000), metavar="N",
                   help="kNN (protocol_args.knn settings) every N epochs and after the last, reported at the last and "
                        "the best epoch (monitor_knn); 0 off (default, or the preset's)")
    p.add_argument("--online-linear", action="store_true",
                   help="train a linear head online on the encoder's detached features, scored every epoch "
                        "(online_linear; default off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars on a terminal)")
    p.add_argument("--jobs", type=int_range(1, 256), default=1, metavar="N",
                   help="run N configs at once in worker processes, each with cores/N torch threads unless "
                        "OMP_NUM_THREADS is set; same records as one by one (default 1)")
    preset_flags.add_arguments(p)
    run_flags.add_arguments(p)
    train_flags.add_arguments(p)
    launcher_flags.add_arguments(p)
    ddp_flags.add_arguments(p)


def parse_method_args(pairs: list[str] | None) -> dict:
    return parse_pairs(pairs, "--method-arg")


def single_config(a: argparse.Namespace) -> RunConfig:
    if not a.method or not a.dataset:
        raise UsageError("give --method and --dataset (or --suite NAME); see 'repbench list methods|datasets'")
    cls = METHODS.get(a.method)
    recipe = cls.paper_recipe if a.recipe == "paper" else UNIFIED_RECIPE
    overrides = {k: v for k, v in (("lr", a.lr), ("weight_decay", a.weight_decay), ("optimizer", a.optimizer))
                 if v is not None}
    name = a.recipe or "unified"
    if overrides:
        recipe, name = replace(recipe, **overrides), f"{name}+custom"
    return RunConfig(method=a.method, dataset=a.dataset, backbone=a.backbone or "convnet", epochs=a.epochs or 1,
                     batch_size=a.batch_size or 256, seed=a.seed or 0, device=a.device, recipe=recipe, recipe_name=name,
                     method_args=parse_method_args(a.method_arg), per_class=a.per_class,
                     test_per_class=a.test_per_class, deterministic=a.deterministic, image_size=given_image_size(a),
                     **preset_flags.monitor_flags(a))


def given_image_size(a: argparse.Namespace) -> int | None:
    """--image-size, else $REPBENCH_IMAGE_SIZE, else None: the size a run is keyed by is always in its config."""
    return a.image_size or (image_size(0) or None)


def suite_configs(a: argparse.Namespace) -> list[RunConfig]:
    given = [f"--{f.replace('_', '-')}" for f in SINGLE_RUN_FLAGS if vars(a)[f] is not None]
    if given:
        raise UsageError(f"--suite fixes its own configs; drop {', '.join(given)} or run without --suite")
    return [replace(c, device=a.device, deterministic=a.deterministic or c.deterministic, **preset_flags.monitor_flags(a))
            for c in SUITES.get(a.suite)()]


def given_configs(a: argparse.Namespace) -> list[RunConfig]:
    if preset_flags.wanted(a):
        return [preset_flags.preset_config(a)]
    return suite_configs(a) if a.suite else [single_config(a)]


def run(a: argparse.Namespace) -> int:
    requested, a.device = a.device, run_flags.pick_device(a.device)
    a.device = ddp_flags.join(a)  # under torchrun: this rank's process group
    configs = run_flags.expand_seeds(given_configs(a), a)
    if a.protocols is not None:  # "" means no protocol (train only)
        configs = [replace(c, protocols=tuple(p.strip() for p in a.protocols.split(",") if p.strip())) for c in configs]
    configs = [replace(c, **train_flags.config_kwargs(a), **ddp_flags.config_kwargs(a)) for c in configs]
    for c in configs:
        validate(c)
    ddp_flags.check(configs, a)
    out = Path(a.out)
    ensure_writable_dir(out)
    if launcher_flags.wanted(a):  # the job picks its own device (--device auto) where it runs
        a.device = requested
        return launcher_flags.dispatch(a, out)
    if ddp_flags.wanted(a):  # --nproc N: this command line on N ranks, through torchrun
        return ddp_flags.launch(a)
    a.device_line = run_flags.device_line(requested, a.device)
    return ddp_flags.run_rank(execute, configs, out, a)


def execute(configs: list[RunConfig], out: Path, a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    opts = Options(data_root=a.data_root, resume=a.resume, progress=not a.no_progress and sys.stderr.isatty(),
                   **train_flags.options(a))
    if a.jobs > 1:  # spawned workers read it at start: cores shared out instead of N x all cores
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.jobs)))
    todo, kept, skipped = run_flags.split_finished(configs, out, a.force or a.resume)
    done = run_many(todo, out, opts, jobs=a.jobs, log=run_flags.announcing(a.device_line)) if todo else {}
    records = [kept.get(c.run_id()) or done[c.run_id()] for c in configs]
    runs = run_dir_for(configs[0], out).parent if a.suite or len(configs) > 1 else run_dir_for(configs[0], out)
    # The table covers exactly this invocation's runs, not stale records of older code in the same folder.
    text, md, _ = write_table(runs, runs, records=records)
    print(text)
    for line in [*skipped, *run_flags.warmup_warnings(records)]:
        print(line, file=sys.stderr)
    print(f"{len(configs)} run(s) in {time.perf_counter() - t0:.0f} s; table written to {md}", file=sys.stderr)
    return 0
