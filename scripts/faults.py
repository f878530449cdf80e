"""Count the fault-injection test set (tests/test_faults_*.py): cases, right, wrong.

    .venv/bin/python scripts/faults.py            # this checkout
    .venv/bin/python scripts/faults.py --at REV   # the same tests against the code of REV (a temporary worktree)

Each parametrized case is one hostile input. Against an older revision, a test file that cannot even be collected
there (it imports a mechanism that revision lacks) counts all its cases, as collected here, as wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, files: list[str], junit: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH comes before the editable install's path entry, so the tree's own code is imported.
    cmd = [sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", "-q", "--continue-on-collection-errors",
           f"--junitxml={junit}"]
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})


def collected(files: list[str]) -> Counter:
    """Cases per file as collected here ("path: N" lines: pyproject's -q plus this -q)."""
    out = subprocess.run([sys.executable, "-m", "pytest", *files, "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    pairs = (line.rsplit(": ", 1) for line in out.splitlines() if line.startswith("tests/") and ": " in line)
    return Counter({path: int(n) for path, n in pairs})


def tally(junit: Path) -> tuple[Counter, Counter]:
    right, wrong = Counter(), Counter()
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        bad = any(child.tag in ("failure", "error") for child in case)
        (wrong if bad else right)[Path(name).name] += 1
    return right, wrong


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--at", help="a git revision whose code the current fault tests run against")
    a = p.parse_args()
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_faults_*.py"))
    per_file = collected(files)
    with tempfile.TemporaryDirectory() as tmp:
        tree = ROOT
        if a.at:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), a.at], cwd=ROOT, check=True,
                           capture_output=True)
            for f in files:
                shutil.copy(ROOT / f, tree / f)
        try:
            run(tree, files, Path(tmp) / "junit.xml")
            right, wrong = tally(Path(tmp) / "junit.xml")
        finally:
            if a.at:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    print(f"{'file':32} {'cases':>6} {'right':>6} {'wrong':>6}")
    totals = Counter()
    for f in files:
        name = Path(f).name
        n = per_file[f]
        r = min(right[name], n)
        w = n - r  # a case that did not even run there (collection failed) is wrong
        totals.update(cases=n, right=r, wrong=w)
        print(f"{name:32} {n:6} {r:6} {w:6}")
    print(f"{'total':32} {totals['cases']:6} {totals['right']:6} {totals['wrong']:6}  (code at {a.at or 'this checkout'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
