"""Training logs (bench/logs.py): steps.csv with every scalar a training step returns, appended on resume without
duplicates; TensorBoard and W&B (offline) sinks; a progress line per read when stderr is not a terminal;
--eval-every's kNN curve; bad flag values refused in one line."""

import contextlib
import csv
import importlib.util
import io
import json
import math
from dataclasses import replace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import methods
from bench.cli import build_parser, main
from bench.commands.run import single_config
from bench.config import RunConfig, TrainOptions
from bench.core.errors import UsageError
from bench.data import load_dataset
from bench.logs import BASE_COLUMNS, STEPS_CSV
from bench.runner import run_dir_for, run_one
from bench.train import Trainer

# 100 training images in batches of 25: 4 steps an epoch, 8 in all.
TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "2", "--batch-size", "25",
        "--protocols", "knn", "--device", "cpu"]
STEPS = 8


def steps_csv(run_dir) -> list[dict[str, str]]:
    with (run_dir / STEPS_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits", per_class=10, test_per_class=5)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One CLI run, stderr not a terminal: TensorBoard on, a read every 3 steps, kNN every epoch."""
    out = tmp_path_factory.mktemp("logged")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", "--method", "supervised", *TINY, "--log", "tensorboard", "--log-every", "3",
                     "--eval-every", "1", "--out", str(out)])
    assert code == 0, err.getvalue()
    run_dir = next(out.glob("runs/adhoc/*"))
    return run_dir, err.getvalue(), json.loads((run_dir / "record.json").read_text())


def extra_keys_step(self, batch):
    out = SIMCLR_STEP(self, batch)
    return {**out, "positive_sim": out["loss"].detach() * 0 + 0.5, "queue_fill": 3, "per_view": torch.ones(2)}


SIMCLR_STEP = methods.METHODS.get("simclr").training_step


@pytest.mark.parametrize("method,extra", [("supervised", ["train_acc"]), ("simclr", ["positive_sim", "queue_fill"])])
def test_steps_csv_holds_every_scalar_the_step_returns(tmp_path, ds, monkeypatch, method, extra):
    if method == "simclr":  # a method returning more: a tensor, a Python number, and a vector (not a scalar: left out)
        monkeypatch.setattr(methods.METHODS.get("simclr"), "training_step", extra_keys_step)
    cfg = RunConfig(method=method, dataset="digits", epochs=2, batch_size=25, protocols=())
    rec = run_one(cfg, tmp_path, progress=False, ds=ds, train_opts=TrainOptions(log_every=3))
    rows = steps_csv(run_dir_for(cfg, tmp_path))
    assert list(rows[0]) == [*BASE_COLUMNS, *extra]
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [int(r["epoch"]) for r in rows] == [1] * 4 + [2] * 4
    assert all(float(r["lr"]) > 0 and float(r["images_per_s"]) > 0 and r[extra[0]] != "" for r in rows)
    for entry in rec["training"]["history"]:  # the record's epoch loss is the mean of that epoch's rows
        losses = [float(r["loss"]) for r in rows if int(r["epoch"]) == entry["epoch"]]
        assert entry["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    if method == "simclr":
        assert {r["queue_fill"] for r in rows} == {"3.0"} and float(rows[0]["positive_sim"]) == 0.5


class Killed(Exception):
    pass


def test_resume_appends_without_duplicates(tmp_path, ds, monkeypatch):
    """Killed after step 6 (rows up to 6 written, the checkpoint at step 4), then resumed: steps 1..8 once each,
    the same numbers as an uninterrupted run."""
    cfg = RunConfig(method="simclr", dataset="digits", epochs=2, batch_size=25, protocols=(), deterministic=True)
    every_step = TrainOptions(log_every=1)
    run_one(cfg, tmp_path / "full", progress=False, ds=ds, train_opts=every_step)
    step = Trainer.step

    def die_after_six(self, batch):
        if self.state.step == 6:
            raise Killed
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", die_after_six)
    with pytest.raises(Killed):
        run_one(cfg, tmp_path / "cut", progress=False, ds=ds, train_opts=every_step)
    assert [int(r["step"]) for r in steps_csv(run_dir_for(cfg, tmp_path / "cut"))] == list(range(1, 7))
    monkeypatch.setattr(Trainer, "step", step)
    run_one(cfg, tmp_path / "cut", resume=True, progress=False, ds=ds, train_opts=every_step)
    torch.use_deterministic_algorithms(False)
    cut, full = steps_csv(run_dir_for(cfg, tmp_path / "cut")), steps_csv(run_dir_for(cfg, tmp_path / "full"))
    assert [int(r["step"]) for r in cut] == list(range(1, STEPS + 1))
    assert [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in cut] == [(r["step"], r["epoch"], r["loss"], r["lr"])
                                                                          for r in full]


def test_tensorboard_gets_the_step_and_epoch_scalars(logged_run):
    run_dir, _, _ = logged_run
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/images_per_s", "train/train_acc", "epoch/loss", "epoch/monitor_knn"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in acc.Scalars("epoch/loss")] == [4, 8]


def test_progress_lines_when_stderr_is_not_a_terminal(logged_run):
    """A line at every read: each 3 steps and each epoch's end, with elapsed time and ETA."""
    _, err, _ = logged_run
    lines = [line for line in err.splitlines() if " eta " in line]
    assert [line.split(" step ")[1].split()[0] for line in lines] == ["3/8", "4/8", "6/8", "8/8"]
    assert all(" loss " in line and " img/s " in line and " elapsed " in line for line in lines)
    assert err.splitlines()[0] == lines[0] and " on cpu epoch " in lines[0]  # the device, said in the first line
    assert lines[0].split(" eta ")[1] != "?" and lines[-1].endswith("eta 0:00:00")


def test_eval_every_records_the_knn_curve(logged_run):
    _, _, rec = logged_run
    knn = rec["metrics"]["monitor_knn"]
    assert [p[0] for p in knn["curve"]] == [1, 2] and knn["every"] == 1
    assert all(0 <= p[1] <= 1 for p in knn["curve"])
    assert [e["monitor_knn"] for e in rec["training"]["history"]] == [p[1] for p in knn["curve"]]


@pytest.mark.parametrize("flag", ["--eval-every", "--knn-every"])
def test_eval_every_is_knn_every(flag):
    a = build_parser("run").parse_args(["run", "--method", "simclr", "--dataset", "digits", flag, "3"])
    assert single_config(a).knn_every == 3


def test_no_progress_silences_the_lines(cli, tmp_path):
    code, _, err = cli("run", "--method", "simclr", *TINY, "--epochs", "1", "--out", tmp_path, "--no-progress",
                       "--log-every", "2", "--protocols", "")
    assert code == 0 and " eta " not in err
    assert len(steps_csv(next(tmp_path.glob("runs/adhoc/*")))) == 4  # the log itself is always written


def test_wandb_offline_run_is_written(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, _, err = cli("run", "--method", "simclr", *TINY, "--epochs", "1", "--out", tmp_path / "out",
                       "--log", "wandb", "--protocols", "")
    assert code == 0, err
    run_dir = next((tmp_path / "out").glob("runs/adhoc/*"))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))


def _missing(name):
    real = importlib.util.find_spec
    return lambda spec, *a: None if spec == name else real(spec, *a)


@pytest.mark.parametrize("flags,fragment", [
    (["--log", "bogus"], "not a log sink"),
    (["--log", "tensorboard,csv"], "'csv' is not a log sink"),
    (["--log-every", "0"], "below the minimum"),
    (["--log-every", "x"], "not a whole number"),
    (["--precision", "fp8"], "invalid choice"),
    (["--eval-every", "-1"], "below the minimum"),
    (["--log", "wandb"], "pip install wandb"),
    (["--log", "tensorboard"], "pip install tensorboard"),
])
def test_bad_values_are_refused_in_one_line(cli, refused, tmp_path, monkeypatch, flags, fragment):
    if fragment.startswith("pip install"):
        monkeypatch.setattr(importlib.util, "find_spec", _missing(fragment.split()[-1]))
    out = tmp_path / "out"
    refused(cli("run", "--method", "simclr", *TINY, "--out", out, *flags), fragment, out)


def test_precision_flag_reaches_the_record_and_its_key(cli, tmp_path):
    code, _, err = cli("run", "--method", "supervised", *TINY, "--epochs", "1", "--out", tmp_path, "--precision",
                       "fp32", "--protocols", "")
    assert code == 0, err
    rec = json.loads(next(tmp_path.glob("runs/adhoc/*/record.json")).read_text())
    assert rec["config"]["precision"] == "fp32" and rec["training"]["precision"] == "fp32"
    cfg = RunConfig.from_dict(rec["config"], "record.json")
    assert rec["run_id"] == cfg.run_id() and replace(cfg, precision="bf16").key() != cfg.key()
    assert not math.isnan(rec["training"]["history"][0]["loss"])


def test_a_damaged_steps_log_stops_resume_in_one_line(tmp_path, ds):
    cfg = RunConfig(method="simclr", dataset="digits", epochs=1, batch_size=25, protocols=())
    run_one(cfg, tmp_path, progress=False, ds=ds)
    run_dir = run_dir_for(cfg, tmp_path)
    (run_dir / STEPS_CSV).write_text("not,a\nsteps,log\n")
    with pytest.raises(UsageError, match="steps.csv is not a steps log"):
        run_one(cfg, tmp_path, resume=True, progress=False, ds=ds)
