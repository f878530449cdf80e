"""argparse value types that reject bad numbers with one clear line."""

from __future__ import annotations

import argparse
import math


def _number(kind, text: str, lo: float | None, hi: float | None, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if lo is not None and value < lo:
        raise argparse.ArgumentTypeError(f"{text!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise argparse.ArgumentTypeError(f"{text!r} is above the maximum {hi}")
    return value


def int_range(lo: int | None = None, hi: int | None = None):
    def parse(text: str) -> int:
        return _number(int, text, lo, hi, "whole number")

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False):
    def parse(text: str) -> float:
        value = _number(float, text, lo, hi, "number")
        if open_lo and lo is not None and value <= lo:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than {lo}")
        return value

    parse.__name__ = "number"
    return parse
