"""The one error type the CLI turns into a single line on stderr and exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a config, name, path, file or number.

    The message is one line saying what is wrong and how to fix it; the CLI prints it
    as ``repbench: error: <message>`` and exits with code 2, writing nothing.
    """
