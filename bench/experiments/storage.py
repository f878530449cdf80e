"""Where an Optuna study lives: any SQLAlchemy URL (RDBStorage), or a journal file (a path ending ``.log`` /
``.journal``: JournalStorage + JournalFileBackend, the safe choice for several processes on one machine).
``sqlite:///<out>/optuna.db`` by default. A --storage value is checked before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url

from bench.core.errors import UsageError

JOURNAL_SUFFIXES = (".log", ".journal")


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # rdb | journal
    target: str  # SQLAlchemy URL or journal path

    def open(self):
        if self.kind == "journal":
            try:
                return JournalStorage(JournalFileBackend(self.target))
            except OSError as err:
                raise UsageError(f"cannot open journal storage {self.target}: {err}") from None
        try:
            return optuna.storages.RDBStorage(self.target)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0][:200]
            raise UsageError(f"cannot reach storage {self.target!r}: {reason}; check the URL, server and driver") from None


def _writable_dir(d: Path, what: str) -> None:
    if not d.is_dir():
        raise UsageError(f"{what}: folder {d} does not exist; create it or pick another path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: folder {d} is not writable; pick another path")


def parse_storage(url: str | None, out: Path) -> StorageSpec:
    """Check a --storage value without writing anything; UsageError (one line) when malformed."""
    if url is None:
        return StorageSpec("rdb", f"sqlite:///{(Path(out) / 'optuna.db').resolve()}")
    if "://" not in url:
        if url.endswith(JOURNAL_SUFFIXES):
            path = Path(url).expanduser().resolve()
            _writable_dir(path.parent, f"--storage {url}")
            if path.exists() and not path.is_file():
                raise UsageError(f"--storage {url} is not a file; give a journal file path ending .log or .journal")
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
        _writable_dir(Path(parsed.database).expanduser().resolve().parent, f"--storage {url}")
    return StorageSpec("rdb", url)
