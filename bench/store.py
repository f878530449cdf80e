"""Results on disk: atomic writes, records, checkpoints and provenance."""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import math
import os
import pickle
import platform
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from bench.core.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent
# This machine's name as a file-name part: temp files name their writer's host, since a pid means nothing elsewhere.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see old or new, never half.

    Each writer has its own temp file (mkstemp), so concurrent writers never interleave; the last rename wins
    whole. A failure (full disk, read-only or missing folder) removes the temp file and is reported in one line.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's host and pid in the name tell a temp file a kill left behind from one still being written.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST}.{os.getpid()}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; results are for others to read too
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as err:
        hint = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "pass a writable output folder"
        raise UsageError(f"cannot write {path}: {err.strerror or err}; {hint}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files of atomic writes in ``folder`` whose writer is gone (a kill between write and rename);
    they are never read, only space. A live writer's file stays, and so does another host's. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        *_, host, pid, _ = tmp.name.removesuffix(".tmp").split(".")
        if not pid.isdigit() or host == HOST and not pid_alive(int(pid)):  # no pid: a name from before pids
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without sending; a reused pid keeps a file, never loses one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set and return)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory entry is persisted by fsyncing the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the data itself is already on disk
    finally:
        os.close(fd)


def ensure_writable_dir(out: Path, flag: str = "--out") -> None:
    """Fail before any work when ``out`` cannot hold results; creates nothing and leaves nothing behind.

    ``os.access`` alone says yes to root everywhere (even /proc), so a temp file is created and removed in the
    nearest existing ancestor: that is what the later writes will need.
    """
    out = Path(out)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write results under {out} ({probe} is not a writable directory: not a directory); "
                         f"pass {flag} DIR")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(f"cannot write results under {out} ({probe} is not a writable directory: "
                         f"{err.strerror or err}); pass {flag} DIR") from None


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN or Infinity; where the value matters the writer records str(value)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8 text
        raise UsageError(f"cannot read {path}: {err}") from None


# A checkpoint is torch.save({"repbench_checkpoint": version, "sha256": digest, "payload": uint8 bytes of the
# inner torch.save}). torch.load does not verify zip CRCs (a flipped bit loads silently), so the digest is what
# proves the state is the one written; torch.load(path) still opens the outer layer for inspection. The digest
# is no defence against a crafted file (its writer computes it): both layers load with weights_only=True, which
# builds tensors and plain containers only and refuses any other pickled object. Format 1 held numpy RNG state,
# which weights_only refuses, so it is not loaded.
CHECKPOINT_FORMAT = 2


def save_checkpoint(path: Path, state: dict) -> None:
    inner = io.BytesIO()
    torch.save(state, inner)
    payload = inner.getvalue()
    outer = io.BytesIO()
    torch.save({"repbench_checkpoint": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, outer)
    atomic_write_bytes(path, outer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint we wrote; anything unreadable or altered is reported, never silently loaded or replaced."""
    hint = "delete it to start over, or rerun without --resume"
    outer = _safe_load(path, path, "corrupt or truncated", hint)
    if not isinstance(outer, dict) or "repbench_checkpoint" not in outer:
        raise UsageError(f"checkpoint {path} is not a repbench checkpoint; {hint}")
    if outer["repbench_checkpoint"] != CHECKPOINT_FORMAT:
        raise UsageError(f"checkpoint {path} has format {outer['repbench_checkpoint']!r}, this repbench reads format "
                         f"{CHECKPOINT_FORMAT} only; {hint}")
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise UsageError(f"checkpoint {path} is corrupt (no payload); {hint}")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise UsageError(f"checkpoint {path} is corrupt (checksum mismatch); {hint}")
    state = _safe_load(io.BytesIO(data), path, "corrupt", hint)
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UsageError(f"checkpoint {path} is not a repbench checkpoint; {hint}")
    return state


def pickled_global(err: pickle.UnpicklingError) -> str | None:
    """The class or function a weights-only load refused to call, or None. A pickle that names one is a crafted or
    foreign file; other unpickling errors (unknown opcodes, bad lengths) are damage."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1)[:80] if found else None


def _safe_load(source, path: Path, damaged: str, hint: str) -> Any:
    """torch.load with weights_only=True: tensors and plain containers; any other pickled object is refused."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = pickled_global(err)
        if not name:
            raise UsageError(f"checkpoint {path} is {damaged} (UnpicklingError); {hint}") from None
        raise UsageError(f"checkpoint {path} holds objects other than tensors and plain values (it names {name}); "
                         f"refused, since loading them could run code; {hint}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UsageError(f"checkpoint {path} is {damaged} ({type(err).__name__}); {hint}") from None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(seed: int, device: str) -> dict[str, Any]:
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": sha,
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
