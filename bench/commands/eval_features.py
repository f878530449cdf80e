"""`repbench eval-features`: run the protocols on features computed anywhere.

Inputs are .npz files holding ``x`` (N, D) real features and ``y`` (N,) integer labels 0..C-1.
The output holds one flat object per result key (``knn``, ``knn_k200``, ``linear``, ``kmeans``...),
each with the settings beside the values (fractions 0..1). Every input is checked before anything
is computed; a bad one is one line on stderr, exit code 2, and no output file.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from bench.args import int_range
from bench.errors import UsageError
from protocols import PROTOCOLS
from protocols.base import Features
from protocols.features import check_features

NAME = "eval-features"
HELP = "evaluate features from .npz files (x (N, D), y (N,)) with the k-NN, linear, K-Means and few-shot protocols"
DEFAULT_PROTOCOLS = "knn,linear,kmeans,fewshot"


def add_arguments(p) -> None:
    p.add_argument("--train", required=True, metavar="A.npz", help="training features: arrays x (N, D) and y (N,)")
    p.add_argument("--test", required=True, metavar="B.npz", help="test features, same layout and D")
    p.add_argument("--protocols", default=DEFAULT_PROTOCOLS, metavar="LIST",
                   help=f"comma-separated protocol names (default {DEFAULT_PROTOCOLS})")
    p.add_argument("--out", metavar="M.json", help="write the metrics here (atomically); default: print them")
    p.add_argument("--seed", type=int_range(0), default=0, help="seed of every protocol's random choices")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the protocols compute")


def parse_protocols(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--protocols is empty; give a comma-separated list such as {DEFAULT_PROTOCOLS}")
    for name in names:
        PROTOCOLS.get(name)  # unknown -> UsageError with a did-you-mean
    return list(dict.fromkeys(names))


def load_npz(path: str, which: str) -> Features:
    """x/y of one .npz file as Features; anything unusable is a UsageError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--{which} {path}: no such file")
    if not zipfile.is_zipfile(p):
        raise UsageError(f"--{which} {path} is not an .npz archive; write it with numpy.savez(path, x=..., y=...)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                held = ", ".join(z.files) or "nothing"
                raise UsageError(f"--{which} {path} has no array {missing[0]!r} (it holds {held}); "
                                 "save features as x (N, D) and labels as y (N,)")
            x, y = z["x"], z["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UsageError(f"--{which} {path} cannot be read as .npz ({err})") from None
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"--{which} {path}: x must hold real numbers, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"--{which} {path}: labels y must be integers 0..C-1, got dtype {y.dtype}")
    if x.ndim != 2:
        raise UsageError(f"--{which} {path}: x must be 2-D (N, D), got shape {x.shape}")
    return Features(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                    torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)), {"source": str(p)})


def run(args) -> int:
    from bench.store import write_json

    names = parse_protocols(args.protocols)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if args.out and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a directory; give a file path such as {args.out}/metrics.json")
    train, test = load_npz(args.train, "train"), load_npz(args.test, "test")
    try:
        check_features(train, test)
    except UsageError as err:
        raise UsageError(f"{args.train} / {args.test}: {err}") from None
    num_classes = int(train.y.max()) + 1
    for f in (train, test):
        f.meta.update(num_classes=num_classes, device=args.device)
    metrics: dict = {}
    for name in names:
        metrics.update(PROTOCOLS.get(name)(train, test, seed=args.seed, device=args.device))
    if args.out:
        write_json(Path(args.out), metrics)
        print(f"wrote {len(metrics)} result(s) to {args.out}")
    else:
        clean = {k: {f: (None if isinstance(v, float) and math.isnan(v) else v) for f, v in e.items()}
                 for k, e in metrics.items()}
        print(json.dumps(clean, indent=2))
    return 0
