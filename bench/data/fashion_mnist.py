"""Fashion-MNIST (Xiao et al. 2017) from the Debian package, a user's folder or torchvision's download cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from bench.core.errors import UsageError
from bench.data import Dataset

FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FETCH_HINT = "run 'repbench data fetch fashion-mnist' (or pass --data-root DIR holding the four IDX files)"


def cache_dir() -> Path:
    return Path(os.environ.get("REPBENCH_CACHE", Path.home() / ".cache" / "repbench"))


def _has_fmnist(d: Path) -> bool:
    return all((d / f).exists() or (d / f"{f}.gz").exists() for f in FMNIST_FILES)


def _torchvision_root(candidate: Path) -> Path | None:
    """A root torchvision.datasets.FashionMNIST can read, staging plain or gzipped IDX files if needed."""
    if _has_fmnist(candidate / "FashionMNIST" / "raw"):
        raw, root = candidate / "FashionMNIST" / "raw", candidate
    elif _has_fmnist(candidate):
        raw, root = candidate, None
    else:
        return None
    if root is not None and all((raw / f).exists() for f in FMNIST_FILES):
        return root
    # torchvision reads un-gzipped files from <root>/FashionMNIST/raw; the Debian package ships .gz
    # files in a read-only folder, so stage them (once) into our cache.
    staged_root = cache_dir() / "fashion-mnist" / hashlib.sha256(str(raw.resolve()).encode()).hexdigest()[:12]
    staged = staged_root / "FashionMNIST" / "raw"
    staged.mkdir(parents=True, exist_ok=True)
    for f in FMNIST_FILES:
        src, dst = raw / f, staged / f
        if src.exists():
            if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
                # Copy then rename: a killed or concurrent copy never leaves a truncated file that looks newer.
                part = staged / f".{f}.{os.getpid()}.part"
                shutil.copyfile(src, part)
                os.replace(part, dst)
            continue
        gz = raw / f"{f}.gz"
        if not dst.exists() or dst.stat().st_mtime < gz.stat().st_mtime:
            tmp = Path(tempfile.mkdtemp(dir=staged))
            try:
                extract_archive(str(gz), str(tmp))
                os.replace(tmp / f, dst)
            except (OSError, EOFError, zlib.error) as err:
                raise UsageError(f"cannot decompress {gz}: {err}; the file is corrupt, {FETCH_HINT}") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return staged_root


def fmnist_candidates(data_root: str | None) -> list[Path]:
    if data_root:
        return [Path(data_root)]
    env = os.environ.get("REPBENCH_DATA")
    if env:
        return [Path(env)]
    return [DEBIAN_DIR, cache_dir() / "torchvision"]


def fashion_mnist(data_root: str | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey images, 10 classes.

    Looked up in --data-root, then $REPBENCH_DATA, then the Debian package's folder, then the
    torchvision download cache of ``repbench data fetch``; read through torchvision.
    """
    candidates = fmnist_candidates(data_root)
    for cand in candidates:
        root = _torchvision_root(cand) if cand.is_dir() else None
        if root is None:
            continue
        try:
            tr, te = FashionMNIST(str(root), train=True), FashionMNIST(str(root), train=False)
        except (RuntimeError, ValueError, OSError, AssertionError) as err:
            raise UsageError(f"Fashion-MNIST files under {cand} are corrupt ({err}); {FETCH_HINT}") from None
        if len(tr.data) != 60000 or len(te.data) != 10000:
            found = f"{len(tr.data)}/{len(te.data)}"
            raise UsageError(f"Fashion-MNIST under {cand} has {found} images, expected 60000/10000; {FETCH_HINT}")
        return Dataset("fashion-mnist", tr.data.unsqueeze(1).contiguous(), tr.targets.long(),
                       te.data.unsqueeze(1).contiguous(), te.targets.long(), list(tr.classes), source=str(cand))
    where = ", ".join(str(c) for c in candidates)
    raise UsageError(f"Fashion-MNIST not found in {where}; {FETCH_HINT}")


def fetch_fashion_mnist() -> str:
    """Install the Debian package when apt is usable as root, else download with torchvision."""
    if _has_fmnist(DEBIAN_DIR):
        return f"Fashion-MNIST already installed in {DEBIAN_DIR}"
    apt_err = "apt-get not found"
    if shutil.which("apt-get") and os.geteuid() == 0:
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True,
                           capture_output=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if _has_fmnist(DEBIAN_DIR):
                return f"installed Debian package dataset-fashion-mnist into {DEBIAN_DIR}"
            apt_err = "the package installed no files"
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            apt_err = f"apt-get failed ({err})"
    elif shutil.which("apt-get"):
        apt_err = "apt-get needs root"
    root = cache_dir() / "torchvision"
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return f"downloaded Fashion-MNIST with torchvision into {root}"
    except Exception as err:  # noqa: BLE001 - any network failure means the same advice
        raise UsageError(
            f"could not get Fashion-MNIST: {apt_err}, and torchvision's download failed ({type(err).__name__}); "
            "as root run 'apt-get install dataset-fashion-mnist', or download the four IDX files and pass --data-root DIR"
        ) from None
