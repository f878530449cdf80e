"""A user's TOML file (config, search space, ablation grid), or one line saying why it cannot be read."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bench.core.errors import UsageError


def read_toml(path: Path | str, what: str, form: str, label: str | None = None) -> dict[str, Any]:
    """The file's tables; unreadable: a line naming ``what`` and the path; not TOML (or not UTF-8): a line naming
    ``label`` (default: the path) and pointing at ``form``, where the file's form is described."""
    try:
        return tomllib.loads(Path(path).read_bytes().decode())
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}; give a readable TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{label or path} is not valid TOML ({err}); see {form} for the form") from None
