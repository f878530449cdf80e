"""`repbench table`: aggregate records over seeds (mean, 95% CI) into Markdown and CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.compare import baseline_columns
from bench.core.errors import UsageError
from bench.records import check_patterns, load_checked
from bench.report import DEFAULT_COLUMNS, NARROW, aggregate, flatten, metric_columns, write_aggregate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("A record.json that cannot be read or is malformed (not a record's shape: no config.suite, metrics not "
                "an object, a metric value that is not a number, ...) stops the command with one line naming the file "
                "and exit 2; no table is written. Rows from more than one suite get a suite column. The terminal gets "
                "kNN, linear, K-Means NMI, train s and flags in 120 characters; table.md and --wide hold every column.")
    p.add_argument("--runs", default="results/runs", help="folder searched for record.json (default results/runs)")
    p.add_argument("--out", help="where table.md and table.csv go (default: the --runs folder)")
    p.add_argument("--metrics", help="comma-separated KEY.FIELD columns, fnmatch patterns on KEY (e.g. "
                        "'knn*.top1,linear.top1'; default: the standard columns)")
    p.add_argument("--wide", action="store_true", help="print every column, as in table.md (default: the 120-character "
                   "table)")
    p.add_argument("--baseline", metavar="DIR", help="records to compare with: a 'Δ METRIC' column per metric, the paired "
                   "difference over shared seeds as 'repbench compare' matches configs (default: none)")


def run(a: argparse.Namespace) -> int:
    columns = tuple(c.strip() for c in a.metrics.split(",")) if a.metrics else DEFAULT_COLUMNS
    for c in columns:
        if "." not in c:
            raise UsageError(f"--metrics column {c!r} is not KEY.FIELD (e.g. knn.top1)")
    records = load_checked(Path(a.runs), columns)
    if a.metrics:
        check_patterns(records, columns)
    agg = aggregate(flatten(records, columns))
    if a.baseline:
        base = load_checked(Path(a.baseline), columns, "--baseline DIR")
        present = metric_columns(flatten(records, columns))
        shown = present if a.wide or a.metrics else [m for m in NARROW if m in present]
        agg = baseline_columns(agg, records, base, columns, shown, Path(a.baseline))
    text, _, _ = write_aggregate(agg, Path(a.out or a.runs), a.wide or bool(a.metrics))
    print(text)
    return 0
