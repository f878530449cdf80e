"""Write a CIFAR-10-shaped synthetic dataset in torchvision's published layout (``cifar-10-batches-py``).

For measuring what a CIFAR table costs where real CIFAR is absent (a lent GPU has no internet): same file format,
image count and size as CIFAR-10, so data loading, training and evaluation take the time they would. The images are
per-class colour blobs plus noise: learnable, but the accuracies mean nothing.

    python scripts/fake_cifar.py DIR [--train 50000] [--test 10000]   # then --data-root DIR
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows, CIFAR's channel-major order; a class-coloured disc at a random place on noise."""
    n = len(labels)
    colour = rng.uniform(40, 215, size=(10, 3))[labels]  # (N, 3), one colour per class
    yy, xx = np.mgrid[:32, :32]
    cy, cx = rng.uniform(8, 24, size=(2, n, 1, 1))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 64)[:, None]  # (N, 1, 32, 32)
    x = rng.normal(128, 40, size=(n, 3, 32, 32))
    x = np.where(disc, colour[:, :, None, None], x)
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072)


def write(root: Path, train: int, test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    per = -(-train // 5)
    for i in range(5):
        y = rng.integers(0, 10, size=min(per, train - i * per))
        _dump(d / f"data_batch_{i + 1}", {"data": images(y, rng), "labels": y.tolist(), "batch_label": f"batch {i + 1}"})
    y = rng.integers(0, 10, size=test)
    _dump(d / "test_batch", {"data": images(y, rng), "labels": y.tolist(), "batch_label": "testing batch"})
    _dump(d / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return root


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--test", type=int, default=10_000)
    a = p.parse_args()
    print(write(a.root, a.train, a.test))


if __name__ == "__main__":
    main()
