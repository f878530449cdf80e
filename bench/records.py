"""Reading run records: every record.json under a folder, each checked to have a record's shape before a table
reads it (one line naming the first bad file otherwise)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from bench.core.errors import UsageError


def load_records(runs: Path) -> list[dict]:
    return [rec for _, rec in _load(runs)]


def _load(runs: Path, flag: str = "--runs DIR") -> list[tuple[Path, dict]]:
    """(path, record) of every record.json under ``runs``; the first unreadable or malformed one is a UsageError."""
    runs = Path(runs)
    if not runs.exists():
        raise UsageError(f"no results directory {runs}; run 'repbench run ...' first or pass {flag}")
    records = []
    for path in sorted(runs.rglob("record.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise UsageError(f"cannot read {path}: {err}; delete or rerun that run") from None
        problem = record_problem(rec)
        if problem:
            raise UsageError(f"{path} is not a repbench record ({problem}); delete it or move it out of --runs")
        records.append((path, rec))
    if not records:
        raise UsageError(f"no record.json under {runs}; run 'repbench run ...' first or pass {flag}")
    return records


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {type(None): "null", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def is_number(value: object) -> bool:
    """A JSON number: an int or float, never a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MISSING = object()
# (where, key, default (MISSING: required), test) for every field that flatten() reads.
RECORD_FIELDS = [("config", k, MISSING, _is_text) for k in ("suite", "dataset", "backbone", "method")] + [
    ("config", "seed", MISSING, _is_int), ("config", "epochs", None, lambda v: v is None or _is_int(v)),
    ("config", "method_args", {}, _is_object), ("config", "recipe_name", "", _is_text), ("", "status", "ok", _is_text),
    ("", "metrics", MISSING, _is_object), ("", "data", {}, _is_object), ("", "timing", {}, _is_object),
    ("", "throughput", {}, _is_object)]


def record_problem(rec: object) -> str | None:
    """What keeps ``rec`` from being a row of a table (one phrase), or None when it has a record's shape."""
    if not isinstance(rec, dict):
        return f"the file holds {_json_type(rec)}, not an object"
    if not isinstance(rec.get("config"), dict):
        return "no config" if "config" not in rec else f"config is {_json_type(rec['config'])}, not an object"
    for where, key, default, ok in RECORD_FIELDS:
        value = (rec[where] if where else rec).get(key, default)
        name = f"{where}.{key}".lstrip(".")
        if value is MISSING:
            return f"no {name}"
        if not ok(value):
            return f"{name} is {_json_type(value)}"
    bad = next((k for k, entry in rec["metrics"].items() if not isinstance(entry, dict)), None)
    return None if bad is None else f"metrics.{bad} is {_json_type(rec['metrics'][bad])}, not an object"


def _check_columns(path: Path, rec: dict, columns: tuple[str, ...]) -> None:
    """Every value the table would average is a number (or null)."""
    for key, entry in rec["metrics"].items():
        for col in columns:
            kpat, field = col.rsplit(".", 1)
            value = entry.get(field)
            if value is not None and not is_number(value) and fnmatch.fnmatch(key, kpat):
                raise UsageError(f"{path} is not a repbench record (metrics.{key}.{field} is {_json_type(value)}, "
                                 "not a number); delete it or move it out of --runs")


def load_checked(runs: Path, columns: tuple[str, ...], flag: str = "--runs DIR") -> list[dict]:
    """Every record under ``runs``, each checked to hold numbers wherever ``columns`` read it."""
    loaded = _load(runs, flag)
    for path, rec in loaded:
        _check_columns(path, rec, columns)
    return [rec for _, rec in loaded]


def available_metrics(records: list[dict]) -> list[str]:
    """Every KEY.FIELD that holds a number in some record (what --metrics can name)."""
    return sorted({f"{key}.{field}" for r in records for key, entry in r["metrics"].items() for field, v in entry.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})


def check_patterns(records: list[dict], columns: tuple[str, ...], flag: str = "--metrics") -> None:
    """Each KEY.FIELD pattern matches a number in some record, else one line listing those there are."""
    have = available_metrics(records)
    for col in columns:
        if "." not in col:
            raise UsageError(f"{flag} column {col!r} is not KEY.FIELD (e.g. knn.top1); the records hold: {', '.join(have)}")
        kpat, field = col.rsplit(".", 1)
        if not any(fnmatch.fnmatch(m.rsplit(".", 1)[0], kpat) and m.rsplit(".", 1)[1] == field for m in have):
            raise UsageError(f"{flag} {col!r} matches no metric of the records; they hold: {', '.join(have)}")
