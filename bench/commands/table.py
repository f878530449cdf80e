"""`repbench table`: aggregate records over seeds (mean, 95% CI) into Markdown and CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core.errors import UsageError
from bench.report import DEFAULT_COLUMNS, write_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("A record.json that cannot be read or is malformed (not a record's shape: no config.suite, metrics not "
                "an object, a metric value that is not a number, ...) stops the command with one line naming the file "
                "and exit 2; no table is written. Rows from more than one suite get a suite column.")
    p.add_argument("--runs", default="results/runs", help="folder searched for record.json (default results/runs)")
    p.add_argument("--out", help="where table.md and table.csv go (default: the --runs folder)")
    p.add_argument("--metrics", help="comma-separated KEY.FIELD columns, fnmatch patterns on KEY (e.g. 'knn*.top1,linear.top1')")


def run(a: argparse.Namespace) -> int:
    columns = tuple(c.strip() for c in a.metrics.split(",")) if a.metrics else DEFAULT_COLUMNS
    for c in columns:
        if "." not in c:
            raise UsageError(f"--metrics column {c!r} is not KEY.FIELD (e.g. knn.top1)")
    text, _, _ = write_table(Path(a.runs), Path(a.out or a.runs), columns)
    print(text)
    return 0
