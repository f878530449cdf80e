"""`repbench compare A B`: per config and metric, A - B paired over shared seeds, 95% interval and verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.compare import compare, markdown
from bench.records import check_patterns, load_checked
from bench.report import DEFAULT_COLUMNS
from bench.store import atomic_write_bytes, ensure_writable_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Configs are matched on every config field except those with one value throughout A and another "
                "throughout B (what the two sets differ in, e.g. epochs 2 vs 4), and runs on the seed. Two sets with "
                "no config or no seed in common stop the command with one line and exit 2.")
    p.add_argument("a", metavar="A", help="a folder of records (a run, a suite's runs, an --out folder)")
    p.add_argument("b", metavar="B", help="the folder of records A is compared with")
    p.add_argument("--metrics", help="comma-separated KEY.FIELD patterns, as 'repbench table --metrics' (default: the "
                   "table's standard columns and train_s)")
    p.add_argument("--out", help="also write compare.md and compare.csv there (default: print only)")


def run(a: argparse.Namespace) -> int:
    columns = tuple(c.strip() for c in a.metrics.split(",")) if a.metrics else DEFAULT_COLUMNS
    if a.metrics:
        check_patterns(load_checked(Path(a.a), columns, "another folder as A"), columns)
    if a.out:
        ensure_writable_dir(Path(a.out))
    comp = compare(Path(a.a), Path(a.b), columns)
    text = markdown(comp)
    if a.out:
        atomic_write_bytes(Path(a.out) / "compare.md", text.encode())
        atomic_write_bytes(Path(a.out) / "compare.csv", comp.rows.drop(columns="key").to_csv(index=False).encode())
    print(text)
    return 0
