"""Fault injection for `repbench search` (issue #16): each parametrized case is one hostile input or event.

What must hold: concurrent workers draw from distinct, recorded sampler seeds; a SIGKILLed worker's trial is
failed by the next worker's heartbeat check and its parameters retried, without eating the budget; a study made
for something else (direction, method, scale) is refused before anything is written; a corrupt journal or
SQLite file, or an unavailable device, is one line on stderr and exit 2 with the storage bytes unchanged.

Everything runs on the `smoke` search suite (digits, one epoch, a fraction of a second per trial).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import sys
import time
import traceback
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages._rdb.models import TrialModel

from bench.cli import main
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.experiments import search, search_report
from bench.experiments.storage import parse_storage
from bench.train import Trainer

SEARCH = ("search", "--suite", "smoke", "--seeds", "0")
STUDY = "s"


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


def journal(path: Path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def storage_of(target: Path):
    return journal(target) if target.suffix == ".log" else f"sqlite:///{target}"


def url_of(target: Path) -> str:
    return str(target) if target.suffix == ".log" else f"sqlite:///{target}"


def n_trials(target: Path, name: str = STUDY) -> int:
    return len(optuna.load_study(study_name=name, storage=storage_of(target)).trials)


def study_names(target: Path) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage_of(target)))


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    """A real one-trial `supervised` smoke study named "s" (sqlite): its attrs are what a reuse is checked against."""
    d = tmp_path_factory.mktemp("template")
    assert main([*SEARCH, "--method", "supervised", "--trials", "1", "--study", STUDY, "--out", str(d)]) == 0
    db = d / "optuna.db"
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    empty = d / "empty.db"
    optuna.storages.RDBStorage(f"sqlite:///{empty}")
    return {"db": db.read_bytes(), "attrs": dict(study.user_attrs), "empty": empty.read_bytes()}


def make_study(target: Path, attrs: dict | None, directions=("maximize",), trials: int = 1, name: str = STUDY,
               empty: bytes = b""):
    if target.suffix == ".db" and empty:
        target.write_bytes(empty)  # Optuna's tables already made: creating them takes most of a second
    study = optuna.create_study(storage=storage_of(target), study_name=name, directions=list(directions))
    for k, v in (attrs or {}).items():
        study.set_user_attr(k, v)
    for _ in range(trials):
        study.add_trial(optuna.create_trial(values=[0.5] * len(directions)))
    return study


# --------------------------------------------------------------------------- 3. reusing a study made for something else

REUSE = {
    "direction-minimize": (("minimize",), {}, "minimi"),
    "two-objectives": (("maximize", "maximize"), {}, "direction"),
    "other-method": (("maximize",), {"method": "simclr"}, "method"),
    "other-epochs": (("maximize",), {"epochs": 7}, "epochs"),
    "other-per-class": (("maximize",), {"per_class": 99}, "per_class"),
    "other-dataset": (("maximize",), {"dataset": "mnist"}, "dataset"),
    "other-val-fraction": (("maximize",), {"val_fraction": 0.5}, "val_fraction"),
    "other-backbone": (("maximize",), {"backbone": "resnet18"}, "backbone"),
    "foreign-study-with-trials": (("maximize",), None, "repbench"),
}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
@pytest.mark.parametrize("case", list(REUSE))
def test_mismatched_study_is_refused_before_anything_is_written(cli, tmp_path, template, case, kind):
    directions, change, fragment = REUSE[case]
    target = tmp_path / ("st.db" if kind == "sqlite" else "st.log")
    make_study(target, None if change is None else {**template["attrs"], **change}, directions, empty=template["empty"])
    before, count = target.read_bytes(), n_trials(target)
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 3, "--storage", url_of(target), "--study", STUDY,
                       "--out", tmp_path / "out")
    one_line_error(code, err, repr(STUDY), fragment)
    assert target.read_bytes() == before and n_trials(target) == count
    assert not (tmp_path / "out").exists()


def test_every_study_is_checked_before_any_is_written(cli, tmp_path, template):
    # --methods simclr,supervised: the second study is a minimising one, so the first must not be created either.
    target = tmp_path / "st.db"
    make_study(target, template["attrs"], ("minimize",), name=f"{STUDY}-supervised", empty=template["empty"])
    before = target.read_bytes()
    code, _, err = cli(*SEARCH, "--methods", "simclr,supervised", "--trials", 2, "--storage", url_of(target),
                       "--study", STUDY, "--out", tmp_path / "out")
    one_line_error(code, err, "minimi")
    assert target.read_bytes() == before and study_names(target) == [f"{STUDY}-supervised"]


# --------------------------------------------------------------------------- 4. corrupt journal and SQLite files

def _insert(at: int, bad: bytes):
    return lambda lines: (lines[:at - 1] + [bad] + lines[at - 1:], at)


def _append(bad: bytes):
    return lambda lines: (lines + [bad], len(lines) + 1)


JOURNAL_DAMAGE = {
    "garbage-line": _insert(2, b"this is not json\n"),
    "blank-line": _insert(2, b"\n"),
    "truncated-record": _append(b'{"op_code": 4, "worker_id": "w", "study_id"\n'),
    "torn-last-write": _append(b'{"op_code": 4, "worker_id": "w"'),
    "binary-junk": _append(b"\x00\xff\xfe\x9c\n"),
    "json-array": _append(b"[1, 2, 3]\n"),
    "json-number": _append(b"42\n"),
    "unknown-operation": _append(b'{"op_code": 99, "worker_id": "w"}\n'),
    "missing-worker-id": _append(b'{"op_code": 0}\n'),
}


@pytest.mark.parametrize("case", [*JOURNAL_DAMAGE, "sqlite-file-as-journal"])
def test_corrupt_journal_is_one_line_and_left_unchanged(cli, tmp_path, template, case):
    path = tmp_path / "st.log"
    if case == "sqlite-file-as-journal":
        path.write_bytes(template["db"])
        line = 1
    else:
        make_study(path, template["attrs"])
        lines, line = JOURNAL_DAMAGE[case](path.read_bytes().splitlines(keepends=True))
        path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 2, "--storage", path, "--study", STUDY,
                       "--out", tmp_path / "out")
    one_line_error(code, err, str(path), f"line {line}")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.log"]  # no lock file, no out folder


def _foreign_db(path: Path, template) -> None:
    with sqlite3.connect(path) as con:
        con.execute("create table notes (id integer primary key, text text)")
        con.execute("insert into notes (text) values ('my own data')")
    con.close()


def _old_schema(path: Path, template) -> None:
    path.write_bytes(template["db"])
    with sqlite3.connect(path) as con:
        con.execute("update alembic_version set version_num = 'v3.0.0.a'")
    con.close()


SQLITE_DAMAGE = {
    "text-file": lambda p, t: p.write_bytes(b"hello, I am not a database\n"),
    "journal-file": lambda p, t: p.write_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "s"}\n'),
    "random-bytes": lambda p, t: p.write_bytes(bytes(range(256)) * 16),
    "truncated-database": lambda p, t: p.write_bytes(t["db"][: len(t["db"]) // 2]),
    "header-only": lambda p, t: p.write_bytes(t["db"][:100]),
    "zeroed-pages": lambda p, t: p.write_bytes(t["db"][:8192] + bytes(16384) + t["db"][8192 + 16384:]),
    "foreign-database": _foreign_db,
    "old-optuna-schema": _old_schema,
}


@pytest.mark.parametrize("where", ["--storage", "default"])
@pytest.mark.parametrize("case", list(SQLITE_DAMAGE))
def test_corrupt_sqlite_is_one_line_and_left_unchanged(cli, tmp_path, template, case, where):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "optuna.db" if where == "default" else tmp_path / "st.db"
    SQLITE_DAMAGE[case](path, template)
    before = path.read_bytes()
    storage = () if where == "default" else ("--storage", f"sqlite:///{path}")
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 2, *storage, "--study", STUDY, "--out", out)
    one_line_error(code, err, str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == (["optuna.db"] if where == "default" else [])


# --------------------------------------------------------------------------- 5. devices that are not there

DEVICES = ["mps", "cuda", "cuda:0", "tpu", "meta", "", "cuda:x"]


@pytest.mark.parametrize("device", DEVICES)
def test_unavailable_device_is_refused_before_the_study_is_touched(cli, tmp_path, template, device):
    if device.startswith("cuda") and device != "cuda:x" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    db = tmp_path / "st.db"
    db.write_bytes(template["db"])
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 3, "--storage", f"sqlite:///{db}",
                       "--study", STUDY, "--out", tmp_path / "out", "--device", device)
    one_line_error(code, err, "device")
    assert db.read_bytes() == template["db"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["mps", "tpu"])
def test_run_search_checks_the_device_before_the_study(tmp_path, template, device):
    db = tmp_path / "st.db"
    db.write_bytes(template["db"])
    spec = parse_storage(f"sqlite:///{db}", tmp_path / "out")
    with pytest.raises(UsageError, match="device"):
        search.run_search(["supervised"], search.SEARCH_SUITES.get("smoke"), search.Budget(3, study_name=STUDY), spec,
                          tmp_path / "out", seeds=0, device=device, log=lambda _: None)
    assert db.read_bytes() == template["db"] and n_trials(db) == 1


# --------------------------------------------------------------------------- 2. heartbeats, stale trials, retries

@pytest.mark.parametrize("interval, grace, expect", [(None, None, (60, 180)), (5, None, (5, 15)), (1, 2, (1, 2))])
def test_sqlite_storage_has_heartbeats_and_retries(tmp_path, template, interval, grace, expect):
    from dataclasses import replace

    from bench.experiments.storage import Heartbeat

    (tmp_path / "st.db").write_bytes(template["empty"])
    spec = parse_storage(f"sqlite:///{tmp_path / 'st.db'}", tmp_path)
    if interval is not None:
        spec = replace(spec, heartbeat=Heartbeat(interval, grace))
    storage = spec.open()
    assert (storage.get_heartbeat_interval(), storage.grace_period) == expect
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)


@pytest.mark.parametrize("bad, fragment", [
    pytest.param(("--heartbeat", "0"), "below the minimum", id="heartbeat-zero"),
    pytest.param(("--grace-period", "0"), "below the minimum", id="grace-zero"),
    pytest.param(("--heartbeat", "10", "--grace-period", "5"), "must be longer than", id="grace-shorter-than-heartbeat"),
    pytest.param(("--grace-period", "30"), "must be longer than", id="grace-shorter-than-default-heartbeat"),
])
def test_bad_heartbeat_settings(cli, tmp_path, bad, fragment):
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 1, "--out", tmp_path / "out", *bad)
    one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_journal_reports_running_trials_it_cannot_check(cli, tmp_path, template):
    # JournalStorage has no heartbeats in Optuna 5.0.0: a RUNNING trial there is reported, not counted, not retried.
    path = tmp_path / "st.log"
    make_study(path, template["attrs"], trials=0).ask()
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 1, "--storage", path, "--study", STUDY,
                       "--out", tmp_path / "out")
    assert code == 0, err
    assert "1 trial(s) RUNNING" in err and "heartbeat" in err
    study = optuna.load_study(study_name=STUDY, storage=journal(path))
    assert [t.state.name for t in study.trials] == ["RUNNING", "COMPLETE"]


FORK = multiprocessing.get_context("fork")  # a worker process without paying for importing torch again


def _worker(argv: list[str], log: str, start, hang: bool) -> None:
    code = 1
    with open(log, "w") as f:
        sys.stdout = sys.stderr = f
        try:
            if hang:
                Trainer.run_epoch = lambda self, epoch: time.sleep(600)  # a trial that runs until it is killed
            start.wait()
            code = main(argv)
        except BaseException:
            traceback.print_exc(file=f)
        f.flush()
    os._exit(code)


def start_workers(argvs: list[list], logs: list[Path], hang: bool = False) -> list:
    """Worker processes that enter `repbench search` at the same instant."""
    start = FORK.Event()
    procs = [FORK.Process(target=_worker, args=([str(a) for a in argv], str(log), start, hang))
             for argv, log in zip(argvs, logs, strict=True)]
    for p in procs:
        p.start()
    start.set()
    return procs


def running_with_heartbeat(db: Path) -> list[int]:
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            # RUNNING, beating, and past choosing its parameters (it records its config right after).
            return [n for (n,) in con.execute(
                "select t.number from trials t join trial_heartbeats h on h.trial_id = t.trial_id join "
                "trial_user_attributes a on a.trial_id = t.trial_id where t.state = 'RUNNING' and a.key = 'config'")]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return []


def test_sigkilled_worker_trial_is_failed_and_retried(cli, tmp_path):
    db = tmp_path / "st.db"
    args = [*SEARCH, "--method", "supervised", "--storage", f"sqlite:///{db}", "--study", STUDY,
            "--heartbeat", "1", "--grace-period", "2", "--trials", "2"]
    [worker] = start_workers([[*args, "--out", tmp_path / "a"]], [tmp_path / "a.log"], hang=True)
    try:
        deadline = time.monotonic() + 60
        while not running_with_heartbeat(db):
            assert worker.is_alive(), (tmp_path / "a.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker never started a trial"
            time.sleep(0.05)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
    assert [t.state.name for t in optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials] == ["RUNNING"]
    time.sleep(3.1)  # past the 2 s grace period (SQLite's clock has whole seconds)
    code, _, err = cli(*args, "--out", tmp_path / "b")
    assert code == 0, err
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials
    stale, retry, new = trials  # the killed trial does not eat the budget: two more are run
    assert stale.state.name == "FAIL" and retry.state.name == "COMPLETE" and new.state.name == "COMPLETE"
    assert retry.system_attrs["failed_trial"] == stale.number and retry.system_attrs["retry_history"] == [stale.number]
    assert retry.params == stale.params and retry.user_attrs["paper_defaults"] is True


def _slow_reads() -> None:
    """Hostile scheduling: every worker pauses between reading a trial row and writing it back."""
    find = TrialModel.find_or_raise_by_id

    def slow(cls, *args, **kwargs):
        row = find(*args, **kwargs)
        time.sleep(0.05)
        return row

    TrialModel.find_or_raise_by_id = classmethod(slow)


def _ask(url: str, start, numbers) -> None:
    _slow_reads()
    study = optuna.load_study(study_name=STUDY, storage=parse_storage(url, Path(url).parent).open())
    start.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats outside Study.optimize
        numbers.put(study.ask().number)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_racing_for_one_enqueued_trial_each_get_their_own(tmp_path, template, kind):
    # The paper's point is enqueued (WAITING); workers starting together must not all turn it RUNNING.
    for round_ in range(2):
        target = tmp_path / (f"r{round_}.db" if kind == "sqlite" else f"r{round_}.log")
        make_study(target, template["attrs"], trials=0, empty=template["empty"]).enqueue_trial({"lr": 0.1})
        start, numbers = FORK.Event(), FORK.Queue()
        procs = [FORK.Process(target=_ask, args=(url_of(target), start, numbers)) for _ in range(6)]
        for p in procs:
            p.start()
        time.sleep(0.3)  # every worker has its storage open
        start.set()
        got = sorted(numbers.get(timeout=60) for _ in procs)
        for p in procs:
            p.join()
        assert got == list(range(6)), f"round {round_}: trial numbers {got}"


# --------------------------------------------------------------------------- 1. sampler seeds of concurrent workers

def seeds_and_params(target: Path, name: str = STUDY):
    trials = optuna.load_study(study_name=name, storage=storage_of(target)).trials
    return [t.user_attrs.get("sampler_seed") for t in trials], [t.params for t in trials]


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    """Two single workers, each creating a new study with --sampler-seed 7 and running 2 trials: (folder, log)."""
    runs = []
    for _ in range(2):
        d, err = tmp_path_factory.mktemp("first"), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*SEARCH, "--method", "supervised", "--trials", "2", "--sampler-seed", "7", "--study", STUDY,
                         "--out", str(d)])
        assert code == 0, err.getvalue()
        runs.append((d, err.getvalue()))
    return runs


def test_first_worker_of_a_new_study_is_reproducible_from_its_seed(first_runs):
    (a, log_a), (b, _) = first_runs
    assert "sampler seed 7" in log_a
    assert seeds_and_params(a / "optuna.db")[0] == [7, 7]
    assert seeds_and_params(a / "optuna.db") == seeds_and_params(b / "optuna.db")


def test_a_later_worker_draws_from_a_fresh_recorded_seed(cli, tmp_path, first_runs):
    shutil.copy(first_runs[0][0] / "optuna.db", tmp_path / "optuna.db")
    code, _, err = cli(*SEARCH, "--method", "supervised", "--trials", 3, "--sampler-seed", 7, "--study", STUDY,
                       "--out", tmp_path)
    assert code == 0, err
    seeds, params = seeds_and_params(tmp_path / "optuna.db")
    assert seeds[:2] == [7, 7] and isinstance(seeds[2], int) and seeds[2] != 7
    assert f"sampler seed {seeds[2]}" in err
    assert params[2] not in params[:2]


def test_two_workers_started_together_draw_different_parameters(tmp_path):
    db = tmp_path / "st.db"
    argv = [*SEARCH, "--method", "supervised", "--trials", "4", "--worker-trials", "2", "--storage", f"sqlite:///{db}",
            "--study", STUDY, "--sampler-seed", "3"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = start_workers([[*argv, "--out", tmp_path / "a"], [*argv, "--out", tmp_path / "b"]], logs)
    for w in workers:
        w.join(120)
    errs = [log.read_text() for log in logs]
    assert [w.exitcode for w in workers] == [0, 0], errs
    seeds, params = seeds_and_params(db)
    assert len(seeds) == 4 and None not in seeds, errs
    assert len(set(seeds)) == 2 and 3 in seeds, errs  # the study's creator used --sampler-seed; the other a fresh one
    for s in set(seeds):
        assert any(f"sampler seed {s}" in e for e in errs), errs
    drawn = [json.dumps(p, sort_keys=True) for p in params]
    assert len(set(drawn)) == 4, (drawn, errs)


def test_a_retried_trial_counts_once_in_the_report(tmp_path):
    """A killed worker's paper-defaults trial (FAIL) and its retry (COMPLETE): the report scores the retry once."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.set_user_attr("chance", 0.1)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    stale = optuna.create_trial(state=optuna.trial.TrialState.FAIL, params={"lr": 0.1}, distributions=dist,
                                user_attrs={"paper_defaults": True})
    study.add_trial(stale)
    retry = optuna.create_trial(value=0.7, params={"lr": 0.1}, distributions=dist, user_attrs={"paper_defaults": True},
                                system_attrs={"failed_trial": 0, "retry_history": [0]})
    study.add_trial(retry)
    assert search_report.paper_trial_value(study) == 0.7
    assert search_report.budget_values(study) == [0.7]


@pytest.mark.parametrize("device", ["cuda:1", "cuda:7"])
def test_a_gpu_index_beyond_the_visible_ones_is_one_line(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match=r"1 CUDA GPU\(s\) are visible \(cuda:0 to cuda:0\)"):
        resolve_device(device)
