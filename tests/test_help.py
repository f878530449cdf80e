"""Help and start-up: every flag of every command states its default, `repbench --version`, and the commands that
must start at once (--help, list) import no torch (its import alone is over a second)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bench.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_has_help_stating_its_default(name):
    missing = []
    for action in command_parser(name)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        if not text or action.option_strings and not action.required and "default" not in text:
            missing.append(f"{'/'.join(action.option_strings) or action.dest}: {text!r}")
    assert not missing, f"repbench {name}: flags without a help text stating the default: {missing}"


def test_version_names_the_package_and_the_commit(cli):
    with pytest.raises(SystemExit) as exit_:
        cli("--version")
    assert exit_.value.code == 0


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REPBENCH_PLUGINS"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_version_output():
    proc = run_python("from bench.cli import main; main(['--version'])")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"repbench {metadata.version('repbench')}"), line
    if (ROOT / ".git").exists():
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        assert f"(git {sha.stdout.strip()}" in line, line


@pytest.mark.parametrize("argv", [["--help"], ["list", "methods"], ["list", "protocols"],
                                  ["list", "suites"], ["list", "presets"]], ids=" ".join)
def test_quick_commands_import_no_torch(argv):
    proc = run_python(f"import sys; from bench.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                      "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    assert proc.stderr.strip().splitlines()[-1] == "NO TORCH", proc.stderr[-2000:]
    assert proc.stdout.strip()
