"""Where the paper datasets' folders are looked up, and the image size the folder datasets are decoded at.

Lookup order: ``--data-root``, else ``$REPBENCH_DATA``, else ``$REPBENCH_CACHE/torchvision`` (where
``repbench data fetch`` downloads). Only the first that is given is searched, so a run never silently reads a
different copy than the one the user named.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UsageError
from bench.data.cache import cache_dir, env_value

SIZE_RANGE = (8, 1024)


def candidates(data_root: str | None) -> list[Path]:
    if data_root:
        return [Path(data_root)]
    env = env_value("REPBENCH_DATA")
    if env:
        if not Path(env).is_dir():
            why = "it is a file" if Path(env).exists() else "no such folder"
            raise UsageError(f"REPBENCH_DATA={env} is not a folder ({why}); point it at the folder holding the "
                             "dataset, or unset it")
        return [Path(env)]
    return [cache_dir() / "torchvision"]


def download_root() -> Path:
    """Where ``repbench data fetch`` puts torchvision's downloads: the folder the loaders look in last."""
    return candidates(None)[0]


def image_size(default: int) -> int:
    """``$REPBENCH_IMAGE_SIZE`` or the dataset's default: the side, in pixels, images are resized to at load."""
    value = env_value("REPBENCH_IMAGE_SIZE")
    if value is None:
        return default
    lo, hi = SIZE_RANGE
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise UsageError(f"REPBENCH_IMAGE_SIZE={value} is not a whole number of pixels from {lo} to {hi}; "
                         f"set e.g. REPBENCH_IMAGE_SIZE={default}, or unset it")
    return int(value)
