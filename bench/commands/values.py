"""KEY=VALUE flag values (--method-arg, --set), each VALUE read as JSON with finite numbers only."""

from __future__ import annotations

import json
import math
import reprlib

from bench.core.errors import UsageError


def parse_pairs(pairs: list[str] | None, flag: str) -> dict:
    """KEY=VALUE pairs, each VALUE read as JSON (numbers, lists, true/false/null) or else kept as text."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair!r} is not KEY=VALUE (e.g. {flag} temperature=0.2)")
        try:
            out[key] = _json_value(pair, value, flag)
        except json.JSONDecodeError:  # not JSON: text, which the option's own check accepts or refuses
            out[key] = value
        except ValueError:  # an integer past int()'s 4300 digits
            raise UsageError(f"{flag} {reprlib.repr(pair)}: a number of {len(value)} digits is too long") from None
    return out


def _json_value(pair: str, text: str, flag: str):
    """``text`` as JSON, refusing the NaN, Infinity, -Infinity (and 1e999 = inf) that Python's json reads but
    strict JSON, and so record.json, cannot hold."""
    def refuse(_: str):
        raise UsageError(f"{flag} {reprlib.repr(pair)}: not a finite number; give a finite value")

    def number(t: str) -> float:
        return float(t) if math.isfinite(float(t)) else refuse(t)

    return json.loads(text, parse_constant=refuse, parse_float=number)
