"""`repbench run`'s flags about which runs happen: --seeds, --device auto (said in the first line), a finished record
kept unless --force, and the warning for a warm-up a short run cut."""

from __future__ import annotations

import json

import pytest
import torch

TINY = ("--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "knn", "--no-progress")
RUN = ("run", "--method", "simclr", *TINY)


def records(out):
    return {json.loads(p.read_text())["config"]["seed"]: p for p in out.glob("runs/adhoc/*/record.json")}


def test_seeds_device_and_reruns(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli(*RUN, "--seeds", "0,2", "--out", out)
    assert code == 0, err
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert err.splitlines()[0].startswith(f"repbench: device {device} (--device auto: "), err
    found = records(out)
    assert sorted(found) == [0, 2]
    before = found[2].read_bytes(), found[2].stat().st_mtime_ns

    # The same config again: skipped, saying where its record is; the record is untouched and still tabled.
    code, stdout, err = cli(*RUN, "--seed", "2", "--out", out)
    assert code == 0, err
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and str(found[2]) in skipped[0] and "--force" in skipped[0], err
    assert (found[2].read_bytes(), found[2].stat().st_mtime_ns) == before
    assert "simclr" in stdout

    code, _, err = cli(*RUN, "--seed", "2", "--out", out, "--force")
    assert code == 0 and "skipped" not in err, err
    assert found[2].stat().st_mtime_ns != before[1]
    assert json.loads(found[2].read_text())["provenance"]["time"] >= json.loads(before[0])["provenance"]["time"]


def test_explicit_device_is_said_without_auto(cli, tmp_path):
    code, _, err = cli(*RUN, "--device", "cpu", "--out", tmp_path / "out")
    assert code == 0 and err.splitlines()[0] == "repbench: device cpu", err


def test_a_warm_up_cut_by_a_short_run_is_a_warning(cli, tmp_path):
    code, _, err = cli(*RUN, "--recipe", "paper", "--out", tmp_path / "out")  # SimCLR's paper: 10 warm-up epochs
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("repbench: warning: ")]
    assert len(warnings) == 1 and "warm-up capped at 0 step(s)" in warnings[0] and "recipe's 20" in warnings[0], err


@pytest.mark.parametrize("args,fragment", [
    (("--seeds", "0,x"), "'x' is not a whole number"),
    (("--seeds", "1,1"), "repeats a seed"),
    (("--seeds", "0,-1"), "below the minimum"),
    (("--seeds", "0,1", "--seed", "3"), "--seeds does not combine with --seed"),
    (("--device", "tpu"), "unknown device"),
])
def test_bad_run_flags_are_one_line(cli, refused, tmp_path, args, fragment):
    refused(cli(*RUN, *args, "--out", tmp_path / "out"), fragment, tmp_path / "out")


def test_seeds_do_not_combine_with_a_suite(cli, refused, tmp_path):
    refused(cli("run", "--suite", "smoke", "--seeds", "0,1", "--out", tmp_path / "out"), "--suite", tmp_path / "out")
