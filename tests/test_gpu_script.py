"""The prepared device script (scripts/gpu_check.sh): its --dry-run runs every stage on this CPU at toy sizes and
writes what the device run would, its stage budgets fit one 540 s device call, and the `standard` suite it runs is
the one issue #19 names."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bench.experiments import SUITES
from bench.experiments.suites import STANDARD_EPOCHS, STANDARD_SEEDS
from methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
DEVICE_CALL_S = 540


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_out")
    env = {**os.environ, "OUT": str(out), "REPBENCH_CACHE": str(out.parent / "cache")}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=600)
    return done, out


def test_dry_run_every_stage_succeeds(dry_run) -> None:
    done, out = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    stages = (out / "stages.txt").read_text()
    for name in ("protocols", "table", "standard"):
        assert re.search(rf"^{name} rc=0 ", stages, re.M), stages
    assert "total" in stages


def test_dry_run_writes_the_table_protocols_and_suite_records(dry_run) -> None:
    _, out = dry_run
    table = json.loads(next((out / "table").glob("*.json")).read_text())
    assert [(r["method"], r["preset"]) for r in table["rows"]] == [("simclr", "convnet-28")]
    assert table["rows"][0]["images_per_s"] > 0 and table["provenance"]["device"] == "cpu"
    for protocol in ("knn", "linear", "kmeans", "fewshot"):
        assert re.search(rf"^cpu {protocol}: [0-9.]+ s ", (out / "protocols.log").read_text(), re.M)
    records = list((out / "standard").rglob("record.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["metrics"]["knn"]["top1"] > 0
    assert (out / "standard_table" / "table.md").is_file()
    assert not list(out.rglob("checkpoint*"))  # the device returns $OUT: no weights in it


def test_fixed_stage_budgets_fit_one_device_call() -> None:
    text = SCRIPT.read_text()
    total = int(re.search(r"TOTAL:-(\d+)", text).group(1))
    gpu_part = text.split('if [ "$DEV" = cuda ]; then', 1)[1]
    fixed = [int(b) for b in re.findall(r"^\s*stage \w+ (\d+) ", text, re.M)]
    assert total <= DEVICE_CALL_S - 15  # the install and the final table after the last stage
    assert sum(fixed) < total  # the standard suite gets what is left (at least 30 s)
    assert "--jobs" in gpu_part and "run --suite standard" in gpu_part
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_standard_suite_is_every_method_full_fashion_mnist_resnet18_three_seeds() -> None:
    configs = SUITES.get("standard")()
    assert {c.method for c in configs} == set(METHODS.names())
    assert all(c.dataset == "fashion-mnist" and c.per_class is None and c.test_per_class is None for c in configs)
    assert all(c.protocols is None for c in configs)  # every registered protocol
    assert all(c.epochs == STANDARD_EPOCHS for c in configs) and STANDARD_SEEDS == (0, 1, 2)
    on_resnet = [c for c in configs if c.backbone == "resnet18"]
    assert all(c.backbone_args == {"small_stem": True} for c in on_resnet)
    assert {c.method for c in configs if c.backbone != "resnet18"} <= {"mae", "random"}
    first = configs[: len(configs) // 3]  # seed-major: a suite cut short by its budget has every method at seed 0
    assert {c.seed for c in first} == {0} and {c.method for c in first} == set(METHODS.names())
