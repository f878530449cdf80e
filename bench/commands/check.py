"""`repbench check`: run the CI suite and compare every metric with the committed baseline (exit 1 on a regression)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.core.errors import UsageError
from bench.experiments import SUITES
from bench.experiments.check import (
    DEFAULT_BASELINE,
    UPDATE_HINT,
    baseline_document,
    compare,
    config_drift,
    load_baseline,
    run_suite,
)
from bench.runner import validate
from bench.store import ensure_writable_dir, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="ci", help="suite to run (default ci; see 'repbench list suites')")
    p.add_argument("--baseline", help="baseline JSON (default: results/baselines/<suite>.json in the repository)")
    p.add_argument("--update", action="store_true", help="rewrite the baseline with this run's numbers (on purpose; default off)")
    p.add_argument("--out", help="keep the runs' records in DIR (default: a temporary folder, removed afterwards)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")


def run(a: argparse.Namespace) -> int:
    configs = SUITES.get(a.suite)()
    for c in configs:
        validate(c)
    path = Path(a.baseline) if a.baseline else DEFAULT_BASELINE.with_name(f"{a.suite}.json")
    old = _baseline_before(path, a)  # everything that can be wrong with the input fails here, before the runs
    if a.out:
        ensure_writable_dir(Path(a.out))
    with tempfile.TemporaryDirectory(prefix="repbench-check-") as tmp:
        runs = run_suite(configs, Path(a.out) if a.out else Path(tmp), a.data_root)
    now = {r: e["metrics"] for r, e in runs.items()}
    regressions, n = ([], 0)
    if old is not None:
        regressions, n = compare({r: e["metrics"] for r, e in old["runs"].items()}, now)
        regressions = config_drift(configs, old) + regressions
    if a.update:
        write_json(path, baseline_document(a.suite, runs))
        for r in regressions:
            print(r.line().replace("REGRESSION", "ACCEPTED", 1))
        print(f"check: baseline {path} written ({sum(len(m) for m in now.values())} metrics of {len(now)} runs; "
              f"{len(regressions)} moved beyond tolerance and were accepted); commit it", file=sys.stderr)
        return 0
    for r in regressions:
        print(r.line())
    if regressions:
        print(f"check: {len(regressions)} regression(s) in {n} metrics of {len(now)} runs against {path}; "
              + UPDATE_HINT.format(path=path), file=sys.stderr)
        return 1
    print(f"check: OK, {n} metrics of {len(now)} runs within tolerance of {path}", file=sys.stderr)
    return 0


def _baseline_before(path: Path, a: argparse.Namespace) -> dict | None:
    """The baseline to compare with (None: --update of a missing or unreadable one, which it replaces)."""
    if not a.update:
        old = load_baseline(path)
        if old.get("suite") != a.suite:
            raise UsageError(f"{path} is the baseline of suite {old.get('suite')!r}, not {a.suite!r}; pass --baseline FILE")
        return old
    if path.is_dir():
        raise UsageError(f"--baseline {path} is a directory; give a file path")
    ensure_writable_dir(path.parent, "--baseline")
    try:
        return load_baseline(path) if path.exists() else None
    except UsageError:
        return None  # replacing an unreadable baseline is what --update is for
