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
from bench.commands.list import KINDS

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


# What each kind of `list` names, read where the rest of the code reads it (after the torch check: these import it).
PUBLIC = {"methods": "methods:METHODS", "protocols": "protocols:PROTOCOLS", "datasets": "bench.data:DATASETS",
          "backbones": "methods.backbones:BACKBONES", "suites": "bench.experiments:SUITES", "presets": "bench.presets:names",
          "tables": "bench.reproduce:table_names"}


def test_every_kind_has_its_public_registry():
    assert sorted(PUBLIC) == KINDS.names()


@pytest.mark.parametrize("argv", [["--help"], *[["list", kind] for kind in KINDS.names()]], ids=" ".join)
def test_quick_commands_import_no_torch(argv):
    proc = run_python(f"import sys; from bench.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                      "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    assert proc.stderr.strip().splitlines()[-1] == "NO TORCH", proc.stderr[-2000:]
    assert proc.stdout.strip()


@pytest.mark.parametrize("kind", KINDS.names())
def test_list_prints_the_registry_names(kind):
    module, _, attr = PUBLIC[kind].partition(":")
    proc = run_python(f"from bench.cli import main\nmain(['list', {kind!r}])\nfrom {module} import {attr} as found\n"
                      "print('\\n'.join(found() if callable(found) else found.names()))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    listed, names = lines[: len(lines) // 2], lines[len(lines) // 2:]
    assert listed == names and len(names) == len(set(names)) > 0, proc.stdout


def test_list_datasets_shows_a_plugin_registration():
    proc = subprocess.run([sys.executable, "-m", "bench", "list", "datasets", "--plugin", "tiny_plugin"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "examples" / "plugin_method")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "digits-flipped" in proc.stdout.split() and "digits" in proc.stdout.split()


@pytest.mark.parametrize("name", ["run", "eval", "search", "reproduce", "throughput"])
def test_device_defaults_to_auto(name):
    device = next(a for a in command_parser(name)._actions if a.dest == "device")
    assert device.default == "auto" and "default auto" in device.help


def test_device_auto_runs_where_it_can(cli):
    code, out, err = cli("throughput", "--method", "simclr", "--dataset", "digits", "--batch-size", "50", "--steps", "1",
                         "--warmup", "0")
    assert code == 0 and "img/s" in out, err
