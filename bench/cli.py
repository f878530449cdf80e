"""`repbench` / `python -m bench`: one subcommand per module in bench/commands, listed in ``COMMANDS``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; only the command asked for is
imported. Bad input raises UsageError anywhere below; it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.core.errors import UsageError

# name -> (module, one-line help, longer description or "")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ablate": ("bench.commands.ablate", "run an ablation grid (recipe, augment, batch, floors, quick-ablation, and the "
               "papers' own: simclr-head, simclr-temperature, moco-momentum, dino-centering, simsiam-stopgrad, "
               "byol-predictor, mae-mask-ratio)", ""),
    "check": ("bench.commands.check", "CI regression check: run the ci suite, compare every metric with "
              "results/baselines/ci.json", "Exit 0: every metric within its tolerance "
              "(bench/experiments/tolerances.toml); exit 1: one 'REGRESSION' line per metric that moved; --update "
              "rewrites the baseline on purpose."),
    "data": ("bench.commands.data", "fetch datasets (Debian package or torchvision download)", ""),
    "eval": ("bench.commands.eval", "evaluate released weights (torchvision, MoCo, MoCo v3, DINO, MAE, CLIP formats) with "
             "the protocols on frozen features", ""),
    "eval-features": ("bench.commands.eval_features", "evaluate features from .npz files (x (N, D), y (N,)) with "
                      "the k-NN, linear, K-Means and few-shot protocols", ""),
    "list": ("bench.commands.list", "list registered methods, protocols, datasets, backbones, suites, presets or tables", ""),
    "plot": ("bench.commands.plot", "draw a finished run's reconstructions and decoded interpolations (methods "
             "with a decoder) as a PNG", ""),
    "reproduce": ("bench.commands.reproduce", "run (or reuse) every cell of a published table and write it beside the "
                  "published numbers (Markdown and CSV)", "--scale F runs epochs x F, to smoke a whole table in minutes."),
    "run": ("bench.commands.run", "train and evaluate one method, or every config of a suite (--suite)", ""),
    "search": ("bench.commands.search", "tune a method's hyperparameters with Optuna (validation kNN), or every "
               "method with --methods all", "Several workers with the same --study and --storage share the budget: "
               "--trials is the study's total; rerunning the command continues the study."),
    "table": ("bench.commands.table", "aggregate run records into a Markdown and CSV table", ""),
    "throughput": ("bench.commands.throughput", "measure steady-state training throughput (img/s; two views of an "
                   "image count once)", ""),
}


class _Parser(argparse.ArgumentParser):
    # argparse's own errors print usage plus a message; we want the single-line contract.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` (the others' are not needed to parse it)."""
    parser = _Parser(prog="repbench", description="Benchmark and reproducibility harness for representation learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text, description) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. {description}".strip())
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(handler=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.handler(args) or 0)
    except UsageError as err:
        print(f"repbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
