"""Where an Optuna study lives: any SQLAlchemy URL (RDBStorage), or a journal file (a path ending ``.log`` /
``.journal``: JournalStorage + JournalFileBackend, the safe choice for several processes on one machine).
``sqlite:///<out>/optuna.db`` by default. A --storage value, and an existing journal or SQLite file behind it,
is checked before anything is written: a damaged file is one line naming it, and is left as it was. A database
server's URL (PostgreSQL through psycopg: ``postgresql+psycopg://user:password@host:port/db``; a throw-away one from
scripts/postgres.sh) is connected to once first: a wrong password, a missing database, an unreachable host or a
missing driver is one line, with the password masked.

RDBStorage gets Optuna's heartbeats: a trial whose worker died (SIGKILL, lost node) stops beating, and after the
grace period the next worker to start a trial fails it and enqueues a copy of its parameters
(RetryHeartbeatStaleTrialCallback). JournalStorage has no heartbeats in Optuna 5.0.0 (it is no BaseHeartbeat),
so there a killed worker's trial stays RUNNING: it is not counted toward the budget, and search reports it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.storages.journal._storage import JournalOperation  # Optuna is pinned: its journal's record kinds
from sqlalchemy.engine import make_url

from bench.core.errors import UsageError

JOURNAL_SUFFIXES = (".log", ".journal")
JOURNAL_OPS = frozenset(op.value for op in JournalOperation)
SQLITE_MAGIC = b"SQLite format 3\x00"
UNFINISHED = "an unfinished last line"


@dataclass(frozen=True)
class Heartbeat:
    """A running trial's heartbeat on RDB storages, and when a silent one is declared dead."""

    interval: int = 60  # seconds between heartbeats: one small write per running trial
    grace: int | None = None  # seconds of silence before a RUNNING trial is failed; None = 3 intervals
    max_retry: int = 2  # a trial that kills its worker every time (e.g. out of memory) is given up after this

    @property
    def grace_period(self) -> int:
        return self.grace if self.grace is not None else 3 * self.interval

    def check(self) -> None:
        if self.grace_period <= self.interval:
            raise UsageError(f"--grace-period {self.grace_period} must be longer than --heartbeat {self.interval}, "
                             "or live trials would be failed as stale; e.g. 3 heartbeat intervals")


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # rdb | journal
    target: str  # SQLAlchemy URL or journal path
    heartbeat: Heartbeat = field(default_factory=Heartbeat)

    def open(self):
        if self.kind == "journal":
            try:
                return JournalStorage(JournalFileBackend(self.target))
            except OSError as err:
                raise UsageError(f"cannot open journal storage {self.target}: {err}") from None
        try:
            return self._open_rdb()
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError, RuntimeError) as err:
            # RuntimeError: a database written by another Optuna version (its message says how to upgrade it).
            reason = str(err).splitlines()[0][:240]
            raise UsageError(f"cannot reach storage {shown(self.target)}: {reason}; check the URL, server and driver") from None


    def _open_rdb(self, attempts: int = 5):
        for attempt in range(1, attempts):
            try:
                return self._rdb()
            except sqlalchemy.exc.DBAPIError as err:
                # Workers started together on a new database race to create Optuna's tables and version rows
                # (optuna/optuna#1092, #4621); the loser sees "already exists" (PostgreSQL: a ProgrammingError for
                # the enum types) or a duplicate row, and a second look finds the tables the winner made.
                if not _creation_race(err):
                    raise
                time.sleep(0.1 * attempt)
        return self._rdb()

    def _rdb(self):
        hb = self.heartbeat
        sqlite = make_url(self.target).get_backend_name() == "sqlite"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                self.target, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
                heartbeat_interval=hb.interval, grace_period=hb.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=hb.max_retry))
        if sqlite:
            _serialise(storage.engine)
        return storage


def _serialise(engine) -> None:
    """Make every transaction on a SQLite storage BEGIN IMMEDIATE (SQLAlchemy's recipe for pysqlite).

    pysqlite opens a transaction only at the first write, and SQLite ignores SELECT ... FOR UPDATE, so Optuna's
    read-check-write steps are not atomic there: two workers starting together both turned the one WAITING
    (enqueued) trial RUNNING and ran it twice. Taking the write lock at BEGIN makes the second wait for the first.
    """
    sqlalchemy.event.listen(engine, "connect", _no_driver_transactions)
    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections made while Optuna set the tables up predate the listeners


def _no_driver_transactions(dbapi_connection, record) -> None:
    dbapi_connection.isolation_level = None  # the "begin" listener starts transactions instead


def _creation_race(err: sqlalchemy.exc.DBAPIError) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in text or "locked" in text


def _writable_dir(d: Path, what: str) -> None:
    if not d.is_dir():
        raise UsageError(f"{what}: folder {d} does not exist; create it or pick another path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: folder {d} is not writable; pick another path")


def _journal_line_problem(line: bytes) -> str:
    if not line.endswith(b"\n"):
        return UNFINISHED
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return "not JSON"
    if not isinstance(record, dict) or not isinstance(record.get("worker_id"), str):
        return "not an Optuna journal record"
    code = record.get("op_code")
    if type(code) is not int or code not in JOURNAL_OPS:
        return f"unknown operation {code!r}"
    return ""


def _bad_journal_line(path: Path) -> tuple[int, str] | None:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            problem = _journal_line_problem(line)
            if problem:
                return n, problem
    return None


def check_journal(path: Path, flag: str) -> None:
    """Read every record of an existing journal file, writing nothing; a bad one is one UsageError."""
    try:
        bad = _bad_journal_line(path)
        if bad and bad[1] == UNFINISHED:
            # Another worker may be appending right now; Optuna appends under this lock, so a last line still
            # unfinished while we hold it was torn by a killed writer, and appending after it would spoil the file.
            lock = JournalFileSymlinkLock(str(path))
            lock.acquire()
            try:
                bad = _bad_journal_line(path)
            finally:
                lock.release()
    except OSError as err:
        raise UsageError(f"{flag}: cannot read journal file {path}: {err.strerror or err}; pick another path") from None
    if bad:
        raise UsageError(f"{flag}: journal file {path} is damaged at line {bad[0]} ({bad[1]}); restore it from a "
                         "backup (or remove a torn last line), or give a new journal file")


def _sqlite_problem(path: Path) -> str:
    with open(path, "rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            return "is not a SQLite database"
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        return f"is a damaged SQLite database ({err})"
    if check != "ok":
        return f"is a damaged SQLite database ({check})"
    if tables and "studies" not in tables:
        return f"is a SQLite database without Optuna's tables (it holds {', '.join(sorted(tables)[:3])})"
    return ""


def check_sqlite(path: Path, flag: str) -> None:
    """An existing SQLite file must be an undamaged database that is empty or Optuna's; opened read-only."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise UsageError(f"{flag}: {path} is not a file; give a SQLite database file")
    try:
        problem = _sqlite_problem(path)
    except OSError as err:
        problem = f"cannot be read ({err.strerror or err})"
    if problem:
        raise UsageError(f"{flag}: {path} {problem}; restore it from a backup or give a new database file")


def parse_storage(url: str | None, out: Path) -> StorageSpec:
    """Check a --storage value, and the file behind it, without writing anything; UsageError (one line) when bad."""
    if url is None:
        path = (Path(out) / "optuna.db").resolve()
        check_sqlite(path, f"the default storage (under --out {out})")
        return StorageSpec("rdb", f"sqlite:///{path}")
    if "://" not in url:
        if url.endswith(JOURNAL_SUFFIXES):
            path = Path(url).expanduser().resolve()
            _writable_dir(path.parent, f"--storage {url}")
            if path.exists() and not path.is_file():
                raise UsageError(f"--storage {url} is not a file; give a journal file path ending .log or .journal")
            if path.exists():
                check_journal(path, f"--storage {url}")
            return StorageSpec("journal", str(path))
        raise UsageError(f"--storage {url!r} is neither a SQLAlchemy URL (e.g. sqlite:///out/optuna.db, "
                         "postgresql://user@host/db) nor a journal file ending .log or .journal")
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError, ValueError) as err:
        raise UsageError(f"--storage {url!r} is not a usable SQLAlchemy URL ({str(err).splitlines()[0][:120]}); "
                         "e.g. sqlite:///out/optuna.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError(f"--storage {url!r} is an in-memory database; give a file, e.g. sqlite:///out/optuna.db")
        path = Path(parsed.database).expanduser().resolve()
        _writable_dir(path.parent, f"--storage {url}")
        check_sqlite(path, f"--storage {url}")
    else:
        check_server(parsed)
    return StorageSpec("rdb", url)


def shown(url: str) -> str:
    """A storage URL fit for a message: its password masked."""
    return make_url(url).render_as_string(hide_password=True) if "://" in url else url


def _connect_problem(err: sqlalchemy.exc.DBAPIError) -> str:
    text = " ".join(str(err.orig).split())
    return text.rsplit(" failed: ", 1)[-1].removeprefix("FATAL: ").strip()[:200]


def check_server(url) -> None:
    """Connect once to a database server's storage URL, writing nothing: a wrong password, a missing database, an
    unreachable host or a missing driver is one UsageError here rather than a traceback in every worker."""
    flag = f"--storage {url.render_as_string(hide_password=True)}"
    postgres = url.get_backend_name() == "postgresql"
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 10} if postgres else {})
    except ImportError as err:
        extra = " (pip install 'psycopg[binary]', or repbench's 'scale' extra)" if postgres else ""
        raise UsageError(f"{flag}: its driver {err.name or url.get_driver_name()!r} is not installed{extra}; install "
                         "it, or give another URL, e.g. postgresql+psycopg://user:password@host:port/db") from None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sqlalchemy.exc.DBAPIError as err:
        raise UsageError(f"{flag}: cannot connect ({_connect_problem(err)}); check the user, password, host, port and "
                         "database in the URL (scripts/postgres.sh url DIR prints a throw-away cluster's)") from None
    finally:
        engine.dispose()
