"""`repbench` / `python -m bench`: one subcommand per module in bench/commands, listed in ``COMMANDS``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; only the command asked for is
imported. Bad input raises UsageError anywhere below; it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.core import plugins
from bench.core.errors import UsageError
from bench.version import version_text

# name -> (module, one-line help, longer description or "")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ablate": ("bench.commands.ablate", "run an ablation grid (recipe, augment, batch, floors, quick-ablation, and the "
               "papers' own: simclr-head, simclr-temperature, moco-momentum, dino-centering, simsiam-stopgrad, "
               "byol-predictor, mae-mask-ratio)", ""),
    "check": ("bench.commands.check", "CI regression check: run the ci suite, compare every metric with "
              "results/baselines/ci.json", "Exit 0: every metric within its tolerance "
              "(bench/experiments/tolerances.toml); exit 1: one 'REGRESSION' line per metric that moved; --update "
              "rewrites the baseline on purpose."),
    "compare": ("bench.commands.compare", "compare two sets of records: per config and metric, A - B paired over "
                "shared seeds with a 95% interval and a verdict", ""),
    "config": ("bench.commands.config", "print the TOML file (repbench run --config FILE) that reproduces a finished "
               "run's record", ""),
    "data": ("bench.commands.data", "fetch datasets (Debian package or torchvision download)", ""),
    "decode": ("bench.commands.decode", "train an embedding-conditioned decoder (and a CLIP run's text prior) beside "
               "finished runs and score the generation protocol", ""),
    "eval": ("bench.commands.eval", "evaluate released weights (torchvision, MoCo, MoCo v3, DINO, MAE, CLIP formats) with "
             "the protocols on frozen features", ""),
    "eval-features": ("bench.commands.eval_features", "evaluate features from .npz files (x (N, D), y (N,)) with "
                      "the k-NN, linear, K-Means and few-shot protocols", ""),
    "generate": ("bench.commands.generate", "draw images from a text prompt with a CLIP run's prior and decoder "
                 "(repbench decode first)", ""),
    "list": ("bench.commands.list", "list registered methods, protocols, datasets, backbones, suites, presets or tables", ""),
    "plot": ("bench.commands.plot", "draw a finished run's reconstructions and decoded interpolations (methods "
             "with a decoder) as a PNG", ""),
    "report": ("bench.commands.report", "build a static HTML site (overview, run pages, ablations, searches) from "
               "run records", ""),
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

# Commands that build methods, datasets or protocols by name take --plugin MODULE (repeatable).
PLUGIN_COMMANDS = ("ablate", "eval", "list", "plot", "reproduce", "run", "search", "throughput")


class _Version(argparse.Action):
    # Computed when asked for: the git call is not paid on every start.
    def __init__(self, option_strings: list[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version (and the git commit in a checkout) and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        print(version_text())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    # argparse's own errors print usage plus a message; we want the single-line contract.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` (the others' are not needed to parse it)."""
    parser = _Parser(prog="repbench", description="Benchmark and reproducibility harness for representation learning.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text, description) in COMMANDS.items():
        # argparse %-formats help strings (a "95%" would break --help); descriptions only when they hold "%(prog)".
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=f"{help_text}. {description}".strip())
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            if name in PLUGIN_COMMANDS:
                p.add_argument("--plugin", action="append", metavar="MODULE",
                               help="import MODULE first, which registers methods, datasets or protocols (repeatable; "
                                    "default: only the repbench.plugins entry points)")
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
        if args.command in PLUGIN_COMMANDS:
            plugins.load(args.plugin)
        return int(args.handler(args) or 0)
    except UsageError as err:
        print(f"repbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
