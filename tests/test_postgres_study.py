"""`repbench search` on a real PostgreSQL server (scripts/postgres.sh: a throw-away Debian cluster, psycopg driver).

Four worker processes share one study; one is SIGKILLed mid-trial. Its trial must stop beating, be failed by a
live worker after the grace period and be retried with the same parameters, and the study must end with exactly
``--trials`` COMPLETE trials: none lost, none run twice. Bad server URLs are one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import optuna
import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench.cli import main
from bench.experiments.storage import parse_storage
from bench.experiments.study import OVER
from bench.train import Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
HAVE_SERVER = bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
SEARCH = ("search", "--suite", "smoke", "--seeds", "0", "--method", "supervised")
FORK = multiprocessing.get_context("fork")  # workers without paying for importing torch again
TRIALS = 6


@pytest.fixture(scope="module")
def pg_url():
    """The SQLAlchemy URL of a fresh PostgreSQL cluster, stopped and removed afterwards."""
    if not HAVE_SERVER and not os.environ.get("CI"):
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql); CI must have them")
    # Under /tmp itself: as root the server runs as user postgres, who cannot enter pytest's private tmp_path.
    d = Path(tempfile.mkdtemp(prefix="repbench-pg-"))
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, start.stderr
        url = start.stdout.strip()
        again = subprocess.run(["bash", str(SCRIPT), "url", str(d)], capture_output=True, text=True, timeout=30)
        assert again.stdout.strip() == url and url.startswith("postgresql+psycopg://")
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def _worker(argv: list[str], log: str, start, hanging) -> None:
    code = 1
    with open(log, "w") as f:
        sys.stdout = sys.stderr = f
        try:
            if hanging is not None:
                def hang(self, epoch):  # the victim's first trial runs until the test kills it
                    hanging.set()
                    time.sleep(600)
                Trainer.run_epoch = hang
            start.wait()
            code = main(argv)
        except BaseException:
            traceback.print_exc(file=f)
        f.flush()
    os._exit(code)


def test_four_workers_one_killed_lose_and_duplicate_nothing(pg_url, tmp_path):
    study_name = "pg-four-workers"
    argv = [*SEARCH, "--storage", pg_url, "--study", study_name, "--trials", str(TRIALS), "--heartbeat", "1",
            "--grace-period", "5"]
    start, hanging = FORK.Event(), FORK.Event()
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    procs = [FORK.Process(target=_worker, args=([*argv, "--out", str(tmp_path / f"w{i}")], str(logs[i]), start,
                                                hanging if i == 0 else None)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    victim, live = procs[0], procs[1:]
    try:
        assert hanging.wait(90), logs[0].read_text()[-2000:]
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
    for p in live:
        p.join(150)
    errs = [log.read_text()[-3000:] for log in logs[1:]]
    assert victim.exitcode == -signal.SIGKILL
    assert [p.exitcode for p in live] == [0, 0, 0], errs

    every = optuna.load_study(study_name=study_name, storage=pg_url).trials
    assert [t.number for t in every] == list(range(len(every)))
    # Two workers that found room for the last trial at one instant: the later-numbered one ran nothing.
    over = [t for t in every if t.user_attrs.get(OVER)]
    assert all(t.state.name == "FAIL" and not t.params and "config" not in t.user_attrs for t in over)
    trials = [t for t in every if t not in over]
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == TRIALS, (states, errs)
    [stale] = [t for t in trials if t.state.name == "FAIL"]  # the victim's, failed by a live worker's heartbeat check
    assert len(trials) == TRIALS + 1, states  # nothing run beyond the budget, nothing left RUNNING or WAITING
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
    assert retry.state.name == "COMPLETE" and retry.params == stale.params
    assert retry.system_attrs["retry_history"] == [stale.number]
    drawn = [json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(drawn)) == TRIALS, drawn  # no configuration was run twice


def _wrong_password(url):
    return url.set(password="not-the-password")


BAD = {
    "wrong-password": (_wrong_password, "password authentication failed"),
    "missing-database": (lambda url: url.set(database="no_such_db"), 'database "no_such_db" does not exist'),
    "closed-port": (lambda url: url.set(port=1), "Connection refused"),
    "unknown-host": (lambda url: url.set(host="no-such-host.invalid"), "no-such-host.invalid"),
    "missing-driver": (lambda url: url, "driver 'psycopg' is not installed"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_server_url_is_one_line_and_writes_nothing(cli, refused, pg_url, tmp_path, monkeypatch, case):
    change, fragment = BAD[case]
    url = change(make_url(pg_url))
    before = optuna.get_all_study_names(pg_url)
    if case == "missing-driver":
        monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` does where it is not installed
    result = cli(*SEARCH, "--storage", url.render_as_string(hide_password=False), "--study", f"bad-{case}",
                 "--trials", 1, "--out", tmp_path / "out")
    monkeypatch.undo()
    refused(result, fragment, tmp_path / "out")
    assert make_url(pg_url).password not in result[2]  # the password is masked in the message
    assert optuna.get_all_study_names(pg_url) == before


def _open(url: str, results) -> None:
    try:
        parse_storage(url, Path(tempfile.gettempdir())).open()
        results.put("ok")
    except BaseException as err:  # noqa: BLE001 -- the parent reports whatever a worker met
        results.put(f"{type(err).__name__}: {err}")


def test_workers_opening_a_new_database_together_all_get_it(pg_url):
    """Optuna's schema is made by whichever worker comes first; the others' "already exists" (a ProgrammingError for
    PostgreSQL's enum types, an IntegrityError for a row) is a race to retry, not a bad URL. Before the retry covered
    the ProgrammingError, 1 of 32 such openings failed in one try here."""
    plain = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    for _ in range(3):
        with psycopg.connect(plain, autocommit=True) as conn:  # a new, empty database each round
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        results = FORK.Queue()
        workers = [FORK.Process(target=_open, args=(pg_url, results)) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * len(workers)
