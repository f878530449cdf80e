"""The fixed classifier that scores decoded images: trained once per dataset on real training images, then cached.

Every run and method is scored by the same network, so its accuracy on decoded images measures how much class
information survives encoding and decoding. It is a small supervised convnet trained on up to ``PER_CLASS`` real
training images per class (seed 0); its own accuracy on the real test split is stored with it and recorded beside
every score (the ceiling the decoded images are compared with). Cached under $REPBENCH_CACHE/generation/.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from bench.augment import normalise
from bench.data import Dataset, load_dataset
from bench.data.cache import writable_cache
from bench.generation.decoder import run_epoch
from bench.store import load_checkpoint, save_checkpoint

PER_CLASS = 600
EPOCHS = 4
BATCH = 128


def classifier_net(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(7),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 49, num_classes))


class FixedClassifier:
    def __init__(self, net: nn.Module, info: dict) -> None:
        self.net, self.info = net.eval(), info

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] -> predicted labels (N,); normalised with its own training set's statistics."""
        m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in self.info["mean_std"])
        return torch.cat([self.net((pixels[i:i + 512] - m) / s).argmax(1) for i in range(0, len(pixels), 512)])

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == labels).float().mean())


def classifier_path(dataset: str, size: int) -> Path:
    return writable_cache("generation") / f"classifier-{dataset}-{size}px.pt"


def fixed_classifier(ds: Dataset, data_root: str | None, log=print) -> FixedClassifier:
    """The dataset's fixed classifier, from the cache or trained now (a minute or two on one CPU thread)."""
    path = classifier_path(ds.name, ds.image_size)
    net = classifier_net(ds.channels, ds.num_classes)
    if path.is_file():
        state = load_checkpoint(path)
        net.load_state_dict(state["model"])
        return FixedClassifier(net, state["info"])
    full = load_dataset(ds.name, data_root, PER_CLASS, None, ds.image_size)
    log(f"training the fixed {ds.name} classifier on {len(full.train_y)} real training images (once; cached at {path})")
    t0 = time.perf_counter()
    fit(net, full)
    clf = FixedClassifier(net, {"mean_std": [list(m) for m in full.mean_std()]})
    acc = clf.accuracy(full.test_x.float() / 255, full.test_y)
    clf.info |= {"arch": "2-conv + linear convnet", "n_train": len(full.train_y), "epochs": EPOCHS, "test_top1": acc,
                 "n_test": len(full.test_y), "train_s": round(time.perf_counter() - t0, 1)}
    save_checkpoint(path, {"model": net.state_dict(), "epoch": EPOCHS, "info": clf.info})
    log(f"fixed classifier: {acc:.2%} on the {len(full.test_y)} real test images")
    return clf


def fit(net: nn.Module, ds: Dataset) -> None:
    torch.manual_seed(0)
    x, y = normalise(ds.train_x, *ds.mean_std()), ds.train_y
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(EPOCHS):
        run_epoch(net, opt, x, y, BATCH, nn.functional.cross_entropy)
    net.eval()
