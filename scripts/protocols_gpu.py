"""Default protocols on Fashion-MNIST raw pixels (60k -> 10k), all on CUDA; part of scripts/gpu_check.sh."""

import time

import torch

from bench.data import load_dataset
from protocols import PROTOCOLS
from protocols.base import Features

KEYS = {"knn": "knn", "linear": "linear", "kmeans": "kmeans", "fewshot": "fewshot_1pct"}
SHOWN = ("top1", "nmi", "acc", "regularisation", "iterations", "matmul_dtype")

ds = load_dataset("fashion-mnist")
x, xt = ds.train_x.reshape(60000, -1).float() / 255, ds.test_x.reshape(10000, -1).float() / 255
train, test = Features(x.cuda(), ds.train_y.cuda()), Features(xt.cuda(), ds.test_y.cuda())
for name, key in KEYS.items():
    # A small call first, so CUDA's lazy initialisation is not timed.
    PROTOCOLS.get(name)(Features(train.x[:2000], train.y[:2000]), Features(test.x[:500], test.y[:500]), device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = PROTOCOLS.get(name)(train, test, device="cuda")
    torch.cuda.synchronize()
    vals = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out[key].items() if k in SHOWN}
    print(f"cuda {name}: {time.perf_counter() - t:.2f} s {vals}", flush=True)
