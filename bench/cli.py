"""`repbench` / `python -m bench`: one subcommand per module in bench/commands.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input raises UsageError anywhere below; it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import bench.commands
from bench.errors import UsageError


class _Parser(argparse.ArgumentParser):
    # argparse's own errors print usage plus a message; we want the single-line contract.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def command_modules() -> list:
    mods = [importlib.import_module(f"bench.commands.{m.name}") for m in pkgutil.iter_modules(bench.commands.__path__)]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repbench", description="Benchmark and reproducibility harness for representation learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"repbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
