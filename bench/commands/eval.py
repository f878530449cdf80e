"""`repbench eval`: released weights in their official format, scored with the protocols on frozen features.

The record is a run's (config, metrics, provenance) with the checkpoint's sha256 in place of training; it is
written once, at the end, to <out>/eval/<dataset>/<format>-<backbone>-<sha256[:12]>/record.json. CLIP files
also get zero-shot, and CLIP_benchmark's result file(s) beside the record, written before it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands import run_flags
from bench.commands.args import int_range
from bench.commands.eval_features import DEFAULT_PROTOCOLS, parse_protocols
from bench.evaluate import write_clip_benchmark
from bench.released import ARCHS, FORMATS
from bench.released.run import EvalRequest, evaluate_checkpoint, record_path
from bench.store import ensure_writable_dir, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the released weights (.pth / .pth.tar)")
    p.add_argument("--format", required=True, choices=[*FORMATS, "auto"],
                   help="the release's layout; auto reads it from the file's keys")
    p.add_argument("--dataset", required=True, help="dataset name (see 'repbench list datasets')")
    p.add_argument("--backbone", choices=list(ARCHS),
                   help="ResNet/ViT architecture (default: read from the weights' shapes)")
    p.add_argument("--arch", metavar="NAME", help="CLIP formats: the open_clip model name (ViT-B-32, RN50, ViT-H-14, ...); "
                   "needed for open_clip files, read from the shapes of OpenAI's (default: none)")
    p.add_argument("--protocols", metavar="LIST",
                   help=f"comma-separated protocol names (default {DEFAULT_PROTOCOLS}, and zero-shot for CLIP)")
    p.add_argument("--image-size", type=int_range(8, 1024),
                   help="images are resized to this before the network (default 224, the releases' training size; "
                   "CLIP: its own size, the only one accepted)")
    p.add_argument("--per-class", type=int_range(1), help="use this many training images per class (default all)")
    p.add_argument("--test-per-class", type=int_range(1), help="use this many test images per class (default all)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed of the protocols' random choices (default 0)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when a GPU is visible, else cpu)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")
    p.add_argument("--out", default="results", help="results directory (default results/)")


def run(args) -> int:
    args.device = run_flags.pick_device(args.device)
    ensure_writable_dir(Path(args.out))
    protocols = tuple(parse_protocols(DEFAULT_PROTOCOLS if args.protocols is None else args.protocols))
    req = EvalRequest(Path(args.checkpoint), args.format, args.dataset, args.backbone, protocols, args.image_size,
                      args.data_root, args.device, args.per_class, args.test_per_class, args.seed, args.arch,
                      add_zero_shot=args.protocols is None)
    record = evaluate_checkpoint(req)
    path = record_path(Path(args.out), record)
    if "clip_benchmark" in record:
        write_clip_benchmark(record["metrics"], path.parent, record["config"]["dataset"], record["config"]["backbone"],
                             record["clip_benchmark"]["pretrained"])
    write_json(path, record)
    print(f"wrote {path}")
    return 0
