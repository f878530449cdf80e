"""`repbench decode`: train the embedding-conditioned decoder of finished runs and score the generation protocol.

For each --run: frozen backbone features of its training images -> a decoder (decoder.pt beside the run; resumed
from its last finished epoch unless --restart), and for a CLIP run a prior from the text embedding to the image
features (prior.pt); the generation protocol's result goes to generation.json beside the run
(bench/generation/). --table DIR then writes table.md and table.csv over all the runs given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import float_range, int_range
from bench.generation.compositional_table import TABLE_CSV, TABLE_MD, write_compositional_table
from bench.generation.decoder import DecoderSettings
from bench.generation.figures import COMPOSITIONAL, RECONSTRUCTIONS, TEXT_TO_IMAGE, write_figures
from bench.generation.pipeline import RESULT_FILE, decode_run
from bench.generation.protocol import ProtocolSettings
from bench.generation.runs import check_checkpoint
from bench.generation.table import write_table
from bench.runner import read_run_config
from bench.store import ensure_writable_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", required=True, metavar="DIR",
                   help="a run directory (results/runs/<suite>/<run-id>); repeat for several")
    p.add_argument("--epochs", type=int_range(1, 1000), default=DecoderSettings.epochs,
                   help=f"decoder training epochs (default {DecoderSettings.epochs})")
    p.add_argument("--batch-size", type=int_range(1, 65536), default=DecoderSettings.batch_size,
                   help=f"decoder batch size (default {DecoderSettings.batch_size})")
    p.add_argument("--lr", type=float_range(0, 1, open_lo=True), default=DecoderSettings.lr,
                   help=f"decoder Adam learning rate (default {DecoderSettings.lr})")
    p.add_argument("--test-per-class", type=int_range(1, 100000), default=ProtocolSettings.per_class,
                   help=f"held-out test images per class to reconstruct (default {ProtocolSettings.per_class})")
    p.add_argument("--samples", type=int_range(1, 10000), default=ProtocolSettings.samples,
                   help=f"text-to-image samples per class prompt, CLIP runs (default {ProtocolSettings.samples})")
    p.add_argument("--restart", action="store_true",
                   help="train the decoder from scratch instead of resuming decoder.pt (default: resume)")
    p.add_argument("--table", metavar="DIR",
                   help="also write DIR/table.md and DIR/table.csv over the runs given, and for CLIP runs on shapes "
                   f"DIR/{TABLE_MD} and DIR/{TABLE_CSV} (default: no table)")
    p.add_argument("--figures", metavar="DIR", help=f"also draw DIR/{RECONSTRUCTIONS} (each method's lowest seed) and, "
                   f"for a CLIP run, DIR/{TEXT_TO_IMAGE} (on shapes also DIR/{COMPOSITIONAL}) (default: no pictures)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")


def run(a: argparse.Namespace) -> int:
    dirs = [Path(d) for d in a.run]
    for d in dirs:  # every run is checked before any training starts
        check_checkpoint(d, read_run_config(d))
    for flag, folder in (("--table", a.table), ("--figures", a.figures)):
        if folder:
            ensure_writable_dir(Path(folder), flag)
    settings = DecoderSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr)
    protocol = ProtocolSettings(per_class=a.test_per_class, samples=a.samples)
    results = {}
    for d in dirs:
        r = results[d] = decode_run(d, a.data_root, settings, protocol, resume=not a.restart)
        rec = r["reconstruction"]
        line = f"{d.name}: pixel MSE {rec['mse']:.4f}, decoded top-1 {rec['decoded_top1']:.1%} (real {rec['real_top1']:.1%})"
        if "text_to_image" in r:
            line += f", text-to-image top-1 {r['text_to_image']['top1']:.1%}"
        print(f"{line}; wrote {d / RESULT_FILE}")
    if a.table:
        write_table(dirs, Path(a.table), RESULT_FILE)
        print(f"wrote {Path(a.table) / 'table.md'} and table.csv")
        for path in write_compositional_table(list(results.values()), Path(a.table)):
            print(f"wrote {path}")
    if a.figures:
        draw(results, Path(a.figures), a.data_root)
    return 0


def draw(results: dict[Path, dict], out: Path, data_root: str | None) -> None:
    lowest: dict[tuple[str, str], Path] = {}
    for d, r in sorted(results.items(), key=lambda kv: kv[1]["seed"]):
        lowest.setdefault((r["method"], r["backbone"]), d)
    clip = [d for d in lowest.values() if "text_to_image" in results[d]]
    out.mkdir(parents=True, exist_ok=True)
    for path in write_figures(list(lowest.values()), data_root, out, clip):
        print(f"wrote {path}")
