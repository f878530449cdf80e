"""`repbench report`: a static HTML site of a runs folder: overview table, run pages, ablation and search pages."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.site.build import build


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("The site is written to a temp folder beside --out and renamed into place; an earlier report at --out "
                "is replaced, any other non-empty folder is refused. A folder with no record.json, or a malformed one, "
                "stops the command with one line and exit 2, writing nothing.")
    p.add_argument("--runs", default="results/runs", help="folder searched for record.json (default results/runs); "
                   "ablation grids and searches under it get their own pages")
    p.add_argument("--out", required=True, help="folder the site is written to (open its index.html)")
    p.add_argument("--ablations", action="append", default=[], metavar="DIR",
                   help="another folder of 'repbench ablate' or 'repbench search' reports to include (repeatable; "
                   "default none)")
    p.add_argument("--data-root", help="folder holding the dataset files, for the decoder methods' reconstructions "
                   "(default: where 'repbench data' puts them)")
    p.add_argument("--no-reconstructions", action="store_true",
                   help="skip drawing decoder methods' reconstructions and decoded runs' generation pictures (each loads its "
                        "checkpoint and dataset; default: draw)")


def run(a: argparse.Namespace) -> int:
    runs, reports = build(Path(a.runs), Path(a.out), [Path(d) for d in a.ablations], a.data_root,
                          not a.no_reconstructions)
    print(f"wrote {a.out}/index.html: {runs} run page(s), {reports} ablation/search page(s)")
    return 0
