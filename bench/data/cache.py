"""Where repbench keeps files it can rebuild (staged datasets, downloads, matplotlib's font cache).

Environment, every variable read through ``env_value``:

- ``REPBENCH_CACHE``: the cache folder (default ``$HOME/.cache/repbench``).
- ``REPBENCH_DATA``: a folder holding a dataset's files (read by the loaders).
- ``HOME``: only for the default cache; when empty, the user's home from the password database.
- ``MPLCONFIGDIR`` / ``XDG_CONFIG_HOME``: matplotlib's, looked at before it is imported (``prepare_matplotlib``).

A variable set to an empty or blank value means the same as unset (a stray ``export REPBENCH_CACHE=`` must
not turn the working folder into the cache). A place that cannot be used is one UsageError naming the
variable it came from, raised only when something needs that place.

Folders are filled under a temp name in the same parent and renamed into place whole; the temp name holds
the host and pid of its writer, so a later run removes what a killed run left and nothing a live one writes.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import pwd
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.core.errors import UsageError
from bench.store import HOST, pid_alive

TEMP_RE = re.compile(r"\.(?P<key>[0-9a-f]{12})\.(?P<pid>\d+)\.(?P<host>[A-Za-z0-9-]+)\.(?:tmp|old)")


def env_value(name: str) -> str | None:
    """The variable's value, or None when it is unset, empty or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def home() -> Path:
    value = env_value("HOME")
    if value is None:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    if not os.path.isabs(value):
        raise UsageError(f"HOME={value} is not an absolute path; set HOME to your home folder, "
                         "or REPBENCH_CACHE to a folder you can write")
    return Path(value)


def cache_dir() -> Path:
    value = env_value("REPBENCH_CACHE")
    return Path(value).absolute() if value else home() / ".cache" / "repbench"


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be made into a folder we write, or None once it is one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        return "it is a file"
    except OSError as err:
        return err.strerror or str(err)
    return None


def writable_cache(*parts: str) -> Path:
    """cache_dir()/parts, created; one UsageError naming REPBENCH_CACHE or HOME when it cannot be written."""
    root = cache_dir()
    folder = root.joinpath(*parts)
    why = "it is a file" if root.is_file() else _unwritable(folder)
    if why is None:
        return folder
    if env_value("REPBENCH_CACHE"):
        raise UsageError(f"REPBENCH_CACHE={env_value('REPBENCH_CACHE')} is not a writable folder ({why}); "
                         "point it at a folder you can write, or unset it")
    raise UsageError(f"the cache {root} (from HOME={home()}) is not a writable folder ({why}); "
                     "set REPBENCH_CACHE to a folder you can write")


def remove_stale(parent: Path) -> None:
    """Remove temp folders under ``parent`` whose writer, a process of this host, is gone."""
    for entry in parent.iterdir():
        m = TEMP_RE.fullmatch(entry.name)
        if m and m["host"] == HOST and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def temp_dir(parent: Path, key: str, kind: str = "tmp") -> Path:
    return parent / f".{key}.{os.getpid()}.{HOST}.{kind}"


def publish(tmp: Path, final: Path, key: str) -> None:
    """Rename the filled ``tmp`` to ``final``, replacing an outdated ``final``; a concurrent writer's copy wins."""
    old = temp_dir(final.parent, key, "old")
    with contextlib.suppress(FileNotFoundError):
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _usable(folder: Path) -> bool:
    return folder.is_absolute() and _unwritable(folder) is None


def prepare_matplotlib() -> None:
    """Give matplotlib a writable config folder before it is imported, saying so once if it is a temporary one.

    matplotlib's default ($XDG_CONFIG_HOME or ~/.config)/matplotlib is kept when usable; otherwise our cache
    holds it; when neither can be written, a temp folder (removed at exit) does, with one warning line.
    """
    if env_value("MPLCONFIGDIR"):
        return
    try:
        default = Path(env_value("XDG_CONFIG_HOME") or home() / ".config") / "matplotlib"
    except UsageError:
        default = None
    if default is not None and _usable(default):
        os.environ["MPLCONFIGDIR"] = str(default)
        return
    try:
        os.environ["MPLCONFIGDIR"] = str(writable_cache("matplotlib"))
        return
    except UsageError:
        pass
    tmp = tempfile.mkdtemp(prefix="repbench-matplotlib-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = tmp
    print(f"repbench: warning: neither {default or '~/.config/matplotlib'} nor the repbench cache is writable; "
          "matplotlib's font cache is rebuilt in a temporary folder (set REPBENCH_CACHE or MPLCONFIGDIR to keep it)",
          file=sys.stderr)
