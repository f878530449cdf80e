"""`repbench --version`: the installed package's version, and the commit when it runs from a git checkout."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def version_text() -> str:
    try:
        version = metadata.version("repbench")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    sha = git_sha()
    return f"repbench {version}" + (f" (git {sha})" if sha else "")


def git_sha() -> str | None:
    """The checkout's short commit, with ``-dirty`` when tracked files changed; None outside a checkout."""
    if not (ROOT / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
