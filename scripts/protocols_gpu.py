"""Default protocols on raw pixels (Fashion-MNIST 60k -> 10k by default), timed on one device; a stage of
scripts/gpu_check.sh (its --dry-run passes --device cpu --dataset digits).

    python scripts/protocols_gpu.py [--device cuda] [--dataset fashion-mnist]
"""

import argparse
import time

import torch

from bench.data import load_dataset
from protocols import PROTOCOLS
from protocols.base import Features

KEYS = {"knn": "knn", "linear": "linear", "kmeans": "kmeans", "fewshot": "fewshot_1pct"}
SHOWN = ("top1", "nmi", "acc", "regularisation", "iterations", "matmul_dtype")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device the protocols run on (default cuda)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset whose raw pixels are the features (default fashion-mnist)")
    a = p.parse_args()
    ds = load_dataset(a.dataset)
    x, xt = ds.train_x.flatten(1).float() / 255, ds.test_x.flatten(1).float() / 255
    train, test = Features(x.to(a.device), ds.train_y.to(a.device)), Features(xt.to(a.device), ds.test_y.to(a.device))
    print(f"{a.dataset}: {len(x)} -> {len(xt)} images on {a.device}", flush=True)
    for name, key in KEYS.items():
        # A small call first, so CUDA's lazy initialisation is not timed.
        small = min(2000, len(x)), min(500, len(xt))
        PROTOCOLS.get(name)(Features(train.x[:small[0]], train.y[:small[0]]), Features(test.x[:small[1]], test.y[:small[1]]),
                            device=a.device)
        sync(a.device)
        t = time.perf_counter()
        out = PROTOCOLS.get(name)(train, test, device=a.device)
        sync(a.device)
        vals = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out[key].items() if k in SHOWN}
        print(f"{a.device} {name}: {time.perf_counter() - t:.2f} s {vals}", flush=True)


if __name__ == "__main__":
    main()
