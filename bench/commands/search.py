"""`repbench search`: Optuna search of a method's hyperparameters (or of every method, same budget).

Storage defaults to sqlite:///<out>/optuna.db; open it with ``optuna-dashboard sqlite:///<out>/optuna.db``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench.commands import launcher_flags, run_flags
from bench.commands.args import int_range
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.experiments.scales import trainable_methods
from bench.experiments.search import SEARCH_SUITES, Budget, run_search
from bench.experiments.search_space import read_space, use_space
from bench.experiments.storage import Heartbeat, parse_storage, shown
from bench.experiments.study import PRUNERS
from bench.store import ensure_writable_dir
from methods import METHODS


def add_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--method", help="method to tune (default: the suite's methods; see 'repbench list methods')")
    who.add_argument("--methods", help="'all' (every trainable method) or a comma-separated list; same budget each "
                            "(default: --method's)")
    p.add_argument("--suite", default="quick-search", help="search suite: smoke | quick-search (default quick-search)")
    p.add_argument("--trials", type=int_range(1, 100_000), help="the study's total number of trials (default: the suite's)")
    p.add_argument("--storage", help="SQLAlchemy URL or journal file (.log/.journal); default sqlite:///<out>/optuna.db")
    p.add_argument("--study", help="study name (default METHOD-SUITE-nTRIALS); with --methods, a prefix")
    p.add_argument("--out", default="results/search", help="reports, runs and the default database (default results/search)")
    p.add_argument("--pruner", default="median", choices=list(PRUNERS), help="pruner (default median)")
    p.add_argument("--seeds", type=int_range(0, 100), default=3,
                   help="fresh-seed test re-runs of the best configuration: 0 to skip, else at least 3 (default 3)")
    p.add_argument("--sampler-seed", type=int_range(0, 2**31 - 1), default=0,
                   help="TPE sampler seed of the worker that creates the study; other workers add a fresh random "
                        "offset, recorded in each trial (default 0)")
    p.add_argument("--worker-trials", type=int_range(1, 100_000), help="this process runs at most this many trials "
                        "(default: until the study has --trials)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when a GPU is visible, else cpu)")
    p.add_argument("--heartbeat", type=int_range(1, 86_400), default=Heartbeat.interval,
                   help="seconds between a running trial's heartbeats on database storages (default 60)")
    p.add_argument("--grace-period", type=int_range(1, 864_000),
                   help="seconds without a heartbeat after which a RUNNING trial is failed and retried by the next "
                        "worker (default 3 heartbeats)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")
    p.add_argument("--space", metavar="FILE", help="TOML of knobs searched besides each method's own search_space, one "
                   "[FIELD] table each: low, high, log, integer or choices (default: the methods' own spaces)")
    launcher_flags.add_arguments(p)


def method_list(a: argparse.Namespace) -> list[str]:
    if a.method:
        METHODS.get(a.method)
        return [a.method]
    if not a.methods:
        return list(SEARCH_SUITES.get(a.suite).methods)
    if a.methods.strip() == "all":
        return trainable_methods()
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in names:
        METHODS.get(m)
    return names


def run(a: argparse.Namespace) -> int:
    if a.seeds in (1, 2):
        raise UsageError(f"--seeds {a.seeds}: a confidence interval needs at least 3 seeds; use 0 to skip the re-runs")
    device = run_flags.pick_device(a.device)  # a keeps auto: a launched job picks where it runs
    resolve_device(device)
    names = method_list(a)
    if a.space:
        use_space(read_space(Path(a.space)), [METHODS.get(n) for n in names], Path(a.space))
    suite = SEARCH_SUITES.get(a.suite)
    out = Path(a.out)
    heartbeat = Heartbeat(a.heartbeat, a.grace_period)
    heartbeat.check()
    spec = replace(parse_storage(a.storage, out), heartbeat=heartbeat)
    ensure_writable_dir(out)
    if launcher_flags.wanted(a):
        return launcher_flags.dispatch(a, out)
    budget = Budget(a.trials or suite.trials, a.worker_trials, a.study, a.pruner, a.sampler_seed)
    rows = run_search(names, suite, budget, spec, out, seeds=a.seeds, data_root=a.data_root, device=device)
    for r in rows:
        print(f"{r['method']}\t{r['study']}\tval_paper {100 * r['val_paper']:.1f}\tval_best {100 * r['val_best']:.1f}\t"
              f"test_tuned {100 * r['test_tuned_mean']:.1f} (n={r['test_tuned_n']})")
    # The URL's password stays out of the output (logs and CI artifacts are read by others); the user has it.
    print(f"dashboard: optuna-dashboard {shown(spec.target)}")
    return 0
