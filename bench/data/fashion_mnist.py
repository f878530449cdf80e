"""Fashion-MNIST (Xiao et al. 2017) from the Debian package, a user's folder or torchvision's download cache."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import BinaryIO

from torchvision.datasets import FashionMNIST

from bench.core.errors import UsageError
from bench.data import Dataset
from bench.data.cache import cache_dir, env_value, publish, remove_stale, temp_dir, writable_cache

FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FETCH_HINT = "run 'repbench data fetch fashion-mnist' (or pass --data-root DIR holding the four IDX files)"


def _has_fmnist(d: Path) -> bool:
    return all((d / f).exists() or (d / f"{f}.gz").exists() for f in FMNIST_FILES)


def _raw_folder(candidate: Path) -> Path | None:
    """The folder holding the four files (plain or .gz): ``candidate`` or its FashionMNIST/raw."""
    for raw in (candidate / "FashionMNIST" / "raw", candidate):
        if raw.is_dir() and _has_fmnist(raw):
            return raw
    return None


def _readable_as_is(raw: Path) -> bool:
    """torchvision reads plain files from <root>/FashionMNIST/raw; anything else is staged into our cache."""
    return raw.name == "raw" and raw.parent.name == "FashionMNIST" and all((raw / f).exists() for f in FMNIST_FILES)


def _source(raw: Path, name: str) -> Path:
    return raw / name if (raw / name).exists() else raw / f"{name}.gz"


def _open(raw: Path, name: str) -> BinaryIO:
    src = _source(raw, name)
    return gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")


def _check_headers(raw: Path, where: Path) -> None:
    """The IDX headers (magic, count) of the four files, read before anything is staged or decoded."""
    counts = {}
    for name in FMNIST_FILES:
        try:
            with _open(raw, name) as f:
                magic, counts[name] = struct.unpack(">II", f.read(8))
        except (OSError, EOFError, zlib.error, struct.error) as err:
            raise UsageError(f"Fashion-MNIST files under {where} are corrupt ({name}: {err}); {FETCH_HINT}") from None
        if magic != (0x803 if "images" in name else 0x801):
            raise UsageError(f"Fashion-MNIST files under {where} are corrupt ({name} is not an IDX file); {FETCH_HINT}")
    train, test = counts["train-images-idx3-ubyte"], counts["t10k-images-idx3-ubyte"]
    if (train, test, counts["train-labels-idx1-ubyte"], counts["t10k-labels-idx1-ubyte"]) != (60000, 10000, 60000, 10000):
        raise UsageError(f"Fashion-MNIST under {where} has {train}/{test} images, expected 60000/10000; {FETCH_HINT}")


def _fresh(staged: Path, raw: Path) -> bool:
    """Staged already, and no source file changed since."""
    try:
        return all((staged / f).stat().st_mtime >= _source(raw, f).stat().st_mtime for f in FMNIST_FILES)
    except OSError:
        return False


def _unpack(raw: Path, name: str, dst: Path) -> None:
    with open(dst, "wb") as out:
        try:
            with _open(raw, name) as f:
                shutil.copyfileobj(f, out, 1 << 20)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise UsageError(f"cannot decompress {_source(raw, name)}: {err}; the file is corrupt, {FETCH_HINT}") from None
        out.flush()
        os.fsync(out.fileno())


def _stage(raw: Path) -> Path:
    """A torchvision root with ``raw``'s files unpacked, in our cache: filled under a temp name, renamed whole."""
    parent = writable_cache("fashion-mnist")
    remove_stale(parent)
    key = hashlib.sha256(str(raw.resolve()).encode()).hexdigest()[:12]
    final = parent / key
    if _fresh(final / "FashionMNIST" / "raw", raw):
        return final
    tmp = temp_dir(parent, key)
    try:
        (tmp / "FashionMNIST" / "raw").mkdir(parents=True)
        for name in FMNIST_FILES:
            _unpack(raw, name, tmp / "FashionMNIST" / "raw" / name)
        publish(tmp, final, key)
    except OSError as err:
        raise UsageError(f"cannot stage Fashion-MNIST into the cache {parent} ({err.strerror or err}); free space "
                         "there or set REPBENCH_CACHE to another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fmnist_candidates(data_root: str | None) -> list[Path]:
    if data_root:
        return [Path(data_root)]
    env = env_value("REPBENCH_DATA")
    if env:
        return [Path(env)]
    return [DEBIAN_DIR, cache_dir() / "torchvision"]


def _find(data_root: str | None) -> tuple[Path, Path] | None:
    """(candidate, folder holding the files) of the first candidate that has them; a bad REPBENCH_DATA is an error."""
    env = env_value("REPBENCH_DATA")
    if not data_root and env and not Path(env).is_dir():
        why = "it is a file" if Path(env).exists() else "no such folder"
        raise UsageError(f"REPBENCH_DATA={env} is not a folder ({why}); point it at the folder holding the four "
                         "Fashion-MNIST IDX files, or unset it")
    for cand in fmnist_candidates(data_root):
        raw = _raw_folder(cand)
        if raw is not None:
            return cand, raw
    return None


def fashion_mnist(data_root: str | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey images, 10 classes.

    Looked up in --data-root, then $REPBENCH_DATA, then the Debian package's folder, then the
    torchvision download cache of ``repbench data fetch``; read through torchvision.
    """
    found = _find(data_root)
    if found is None:
        where = ", ".join(str(c) for c in fmnist_candidates(data_root))
        raise UsageError(f"Fashion-MNIST not found in {where}; {FETCH_HINT}")
    cand, raw = found
    _check_headers(raw, cand)
    root = raw.parent.parent if _readable_as_is(raw) else _stage(raw)
    try:
        tr, te = FashionMNIST(str(root), train=True), FashionMNIST(str(root), train=False)
    except (RuntimeError, ValueError, OSError, AssertionError) as err:
        raise UsageError(f"Fashion-MNIST files under {cand} are corrupt ({err}); {FETCH_HINT}") from None
    return Dataset("fashion-mnist", tr.data.unsqueeze(1).contiguous(), tr.targets.long(),
                   te.data.unsqueeze(1).contiguous(), te.targets.long(), list(tr.classes), source=str(cand))


def fetch_fashion_mnist() -> str:
    """Keep files already found; else install the Debian package when apt is usable as root, else download.

    The cache must be writable unless the files found are plain ones torchvision reads in place: .gz files
    (the Debian package's too) are unpacked into it on first use, and torchvision downloads into it.
    """
    found = _find(None)
    if found is None and env_value("REPBENCH_DATA"):
        raise UsageError(f"REPBENCH_DATA={env_value('REPBENCH_DATA')} holds no Fashion-MNIST IDX files; put the four "
                         "files there, or unset it")
    if found is not None and _readable_as_is(found[1]):
        return f"Fashion-MNIST already in {found[0]}"
    cache = writable_cache()
    if found is not None:
        return f"Fashion-MNIST already in {found[0]} (unpacked into {cache} on first use)"
    apt_err = _apt_install()
    if apt_err is None:
        return f"installed Debian package dataset-fashion-mnist into {DEBIAN_DIR}"
    return _download(cache / "torchvision", apt_err)


def _apt_install() -> str | None:
    """Install the Debian package as root; None when its files are there, else why not."""
    if not shutil.which("apt-get"):
        return "apt-get not found"
    if os.geteuid() != 0:
        return "apt-get needs root"
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True,
                       capture_output=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return f"apt-get failed ({err})"
    return None if _has_fmnist(DEBIAN_DIR) else "the package installed no files"


def _download(root: Path, apt_err: str) -> str:
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return f"downloaded Fashion-MNIST with torchvision into {root}"
    except Exception as err:  # noqa: BLE001 - any network failure means the same advice
        raise UsageError(
            f"could not get Fashion-MNIST: {apt_err}, and torchvision's download failed ({type(err).__name__}); "
            "as root run 'apt-get install dataset-fashion-mnist', or download the four IDX files and pass --data-root DIR"
        ) from None
