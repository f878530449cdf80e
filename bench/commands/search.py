"""`repbench search`: Optuna search of a method's hyperparameters (or of every method, same budget).

Storage defaults to sqlite:///<out>/optuna.db; open it with ``optuna-dashboard sqlite:///<out>/optuna.db``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import int_range
from bench.errors import UsageError

NAME = "search"
HELP = "tune a method's hyperparameters with Optuna (validation kNN), or every method with --methods all"
DESCRIPTION = (HELP + ". Several workers with the same --study and --storage share the budget: --trials is the "
               "study's total; rerunning the command continues the study.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--method", help="method to tune (default: the suite's methods; see 'repbench list methods')")
    who.add_argument("--methods", help="'all' (every trainable method) or a comma-separated list; same budget each")
    p.add_argument("--suite", default="quick-search", help="search suite: smoke | quick-search (default quick-search)")
    p.add_argument("--trials", type=int_range(1, 100_000), help="the study's total number of trials (default: the suite's)")
    p.add_argument("--storage", help="SQLAlchemy URL or journal file (.log/.journal); default sqlite:///<out>/optuna.db")
    p.add_argument("--study", help="study name (default METHOD-SUITE-nTRIALS); with --methods, a prefix")
    p.add_argument("--out", default="results/search", help="reports, runs and the default database (default results/search)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"], help="pruner (default median)")
    p.add_argument("--seeds", type=int_range(0, 100), default=3,
                   help="fresh-seed test re-runs of the best configuration: 0 to skip, else at least 3 (default 3)")
    p.add_argument("--sampler-seed", type=int_range(0, 2**31 - 1), default=0, help="TPE sampler seed (default 0)")
    p.add_argument("--worker-trials", type=int_range(1, 100_000), help="this process runs at most this many trials")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data-root", help="folder holding the dataset files")


def method_list(a: argparse.Namespace) -> list[str]:
    import methods
    from bench.ablate import trainable_methods

    if a.method:
        methods.METHODS.get(a.method)
        return [a.method]
    if not a.methods:
        from bench.search import SEARCH_SUITES

        suite = SEARCH_SUITES.get(a.suite)
        if not suite.methods:
            raise UsageError(f"suite {a.suite!r} names no methods; give --method NAME or --methods all")
        return list(suite.methods)
    if a.methods.strip() == "all":
        return trainable_methods()
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in names:
        methods.METHODS.get(m)
    return names


def run(a: argparse.Namespace) -> int:
    from bench.search import SEARCH_SUITES, parse_storage, run_search
    from bench.store import ensure_writable_dir as check_out_dir

    if a.seeds in (1, 2):
        raise UsageError(f"--seeds {a.seeds}: a confidence interval needs at least 3 seeds; use 0 to skip the re-runs")
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    names = method_list(a)
    suite = SEARCH_SUITES.get(a.suite)
    out = Path(a.out)
    spec = parse_storage(a.storage, out)
    check_out_dir(out)
    rows = run_search(names, suite, a.trials or suite.trials, spec, out, study_name=a.study, pruner=a.pruner,
                      sampler_seed=a.sampler_seed, worker_trials=a.worker_trials, seeds=a.seeds,
                      data_root=a.data_root, device=a.device)
    for r in rows:
        print(f"{r['method']}\t{r['study']}\tval_paper {100 * r['val_paper']:.1f}\tval_best {100 * r['val_best']:.1f}\t"
              f"test_tuned {100 * r['test_tuned_mean']:.1f} (n={r['test_tuned_n']})")
    print(f"dashboard: optuna-dashboard {spec.target}")
    return 0
