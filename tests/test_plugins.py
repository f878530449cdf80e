"""Plugins: examples/plugin_method registers a method, a protocol and a dataset from outside the package, through
--plugin and through the repbench.plugins entry-point group; a plugin that fails to import or takes a registered
name is one line, exit 2. Successful loads run in subprocesses, so this session's registries stay the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import plugins
from protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_method"
TINY = ("--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50", "--no-progress",
        "--device", "cpu")


def repbench(*args, path: list[Path] = (EXAMPLE,)) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "OMP_NUM_THREADS": "1"}
    env.pop(plugins.ENV, None)
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_example_plugin_runs_end_to_end_in_worker_processes_too(tmp_path):
    out = tmp_path / "out"
    proc = repbench("run", "--plugin", "tiny_plugin", "--method", "tiny-nce", "--dataset", "digits-flipped",
                    "--protocols", "knn,nearest-centroid", "--seeds", "0,1", "--jobs", "2", *TINY, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in out.glob("runs/adhoc/*/record.json")]
    assert sorted(r["config"]["seed"] for r in recs) == [0, 1]
    for r in recs:
        assert r["status"] == "ok" and r["data"]["name"] == "digits-flipped"
        assert 0.1 < r["metrics"]["nearest-centroid"]["top1"] <= 1 and 0 <= r["metrics"]["knn"]["top1"] <= 1
        assert r["method_config"] == {"temperature": 0.2, "out_dim": 64}
    assert "tiny-nce" in proc.stdout


def test_entry_point_group_loads_without_the_flag(tmp_path):
    # An installed distribution as importlib.metadata finds one: a dist-info folder on the path.
    info = tmp_path / "repbench_tiny_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: repbench-tiny-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\ntiny = tiny_plugin\n")
    # One process lists all three kinds (as three commands would), then the method's options.
    code = "from bench.cli import main; [main(['list', k]) for k in ('methods', 'protocols', 'datasets')]; " \
           "main(['list', 'methods', '-v'])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (tmp_path, EXAMPLE)))}
    env.pop(plugins.ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    names = proc.stdout.split("\n")
    assert {"tiny-nce", "nearest-centroid", "digits-flipped"} <= set(names), proc.stdout
    assert "tiny-nce\n  paper: TinyNCE: InfoNCE between two augmented views" in proc.stdout
    assert "    temperature = 0.2\n    out_dim = 64" in proc.stdout
    assert "tiny-nce" not in repbench("list", "methods", path=[EXAMPLE]).stdout  # not installed: not loaded


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for one-off plugin modules, named after the test so each imports fresh."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(plugins.ENV, raising=False)
    return folder


@pytest.mark.parametrize("body,fragment", [
    (None, "No module named"),
    ("raise RuntimeError('broken\\nacross lines')", "failed to import: RuntimeError: broken across lines; fix the plugin"),
    ("import not_a_module_anywhere", "No module named 'not_a_module_anywhere'"),
    ("def broken(:\n", "SyntaxError"),
    ("from methods import METHODS\nMETHODS.register('simclr')(object)", "method 'simclr' is already registered"),
    ("from protocols import PROTOCOLS\nPROTOCOLS.register('knn')(len)", "protocol 'knn' is already registered"),
    ("from bench.data import DATASETS\nDATASETS.register('digits')(len)", "dataset 'digits' is already registered"),
], ids=["missing", "raises", "imports-missing", "syntax", "dup-method", "dup-protocol", "dup-dataset"])
def test_bad_plugin_is_one_line(cli, refused, plugin_dir, tmp_path, request, body, fragment):
    name = f"plug_{request.node.callspec.id.replace('-', '_')}"
    if body is not None:
        (plugin_dir / f"{name}.py").write_text(body + "\n")
    before = PROTOCOLS.names()
    args = ("run", "--plugin", name, "--method", "simclr", "--dataset", "digits", *TINY, "--out", tmp_path / "out")
    refused(cli(*args), fragment, tmp_path / "out")
    assert PROTOCOLS.names() == before
