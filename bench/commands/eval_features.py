"""`repbench eval-features`: run the protocols on features computed anywhere.

Inputs are .npz files holding ``x`` (N, D) real features and ``y`` (N,) integer labels 0..C-1.
The output holds one flat object per result key (``knn``, ``knn_k200``, ``linear``, ``kmeans``...),
each with the settings beside the values (fractions 0..1). Every input is checked before anything
is computed; a bad one is one line on stderr, exit code 2, and no output file. So is a protocol that would give
nothing but skipped entries on these features (too few samples, over the memory budget): all is known up front.
An entry skipped while others of its protocol run is ``{"skipped": reason}`` in the output and one stderr line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.commands.args import int_range
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.evaluate import refuse_unproducible, run_protocols
from bench.features import load_npz
from bench.store import write_json
from protocols import PROTOCOLS
from protocols.base import Features, check_features
from protocols.limits import Shape

DEFAULT_PROTOCOLS = "knn,linear,kmeans,fewshot"


def add_arguments(p) -> None:
    p.add_argument("--train", required=True, metavar="A.npz", help="training features: arrays x (N, D) and y (N,)")
    p.add_argument("--test", required=True, metavar="B.npz", help="test features, same layout and D")
    p.add_argument("--protocols", default=DEFAULT_PROTOCOLS, metavar="LIST",
                   help=f"comma-separated protocol names (default {DEFAULT_PROTOCOLS})")
    p.add_argument("--out", metavar="M.json", help="write the metrics here (atomically); default: print them")
    p.add_argument("--seed", type=int_range(0), default=0, help="seed of every protocol's random choices (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the protocols compute (default cpu)")


def parse_protocols(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--protocols is empty; give a comma-separated list such as {DEFAULT_PROTOCOLS}")
    for name in names:
        PROTOCOLS.get(name)  # unknown -> UsageError with a did-you-mean
    return list(dict.fromkeys(names))


def run(args) -> int:
    names = parse_protocols(args.protocols)
    resolve_device(args.device)
    if args.out and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a directory; give a file path such as {args.out}/metrics.json")
    (tx, ty), (sx, sy) = load_npz(args.train, "train"), load_npz(args.test, "test")
    train = Features(tx, ty, split="train")
    test = Features(sx, sy, train.num_classes, "test")
    try:
        check_features(train, test)
    except UsageError as err:
        raise UsageError(f"{args.train} / {args.test}: {err}") from None
    refuse_unproducible(names, Shape.of(train, test, args.device), "leave it out of --protocols")
    metrics = run_protocols(names, train, test, seed=args.seed, device=args.device)
    if args.out:
        write_json(Path(args.out), metrics)
        print(f"wrote {len(metrics)} result(s) to {args.out}")
    else:
        clean = {k: {f: (None if isinstance(v, float) and math.isnan(v) else v) for f, v in e.items()}
                 for k, e in metrics.items()}
        print(json.dumps(clean, indent=2))
    return 0
