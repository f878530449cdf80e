"""The fixed classifier of ``shapes``: the shape from the foreground's silhouette, blind to colour, robust to blur.

The generic fixed classifier (bench/generation/classifier.py) trained on RGB ``shapes`` images reads colour as much
as outline: training never shows the held-out (shape, colour) pairs, and it gets only about 31% of the real held-out
test images right. Scoring "did the generator draw a ring" must not depend on "did it draw it purple", so this one
sees the silhouette: each pixel's chroma (max - min channel: grey backgrounds have none) over the image's peak. And
the decoder draws conditional means, blurred (bench/generation/decoder.py), which a classifier of sharp images alone
gets wrong (27% under a 3x3 box blur), so it trains on each image sharp and under three Gaussian blurs. Same network,
training loop and cache as the generic one; its accuracy on the real held-out test images is recorded with it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torchvision.transforms.functional import gaussian_blur

from bench.data import Dataset, load_dataset
from bench.data.cache import writable_cache
from bench.generation.classifier import EPOCHS, PER_CLASS, FixedClassifier, classifier_net, fit
from bench.store import load_checkpoint, save_checkpoint

# Below this chroma (images in [0, 1]) a pixel is grey: backgrounds are grey plus noise of std 6/255 a channel, whose
# chroma stays under 0.1; every shape colour's is 0.55 or more.
MIN_CHROMA = 0.15
BLUR_SIGMAS = (0.8, 1.4, 2.0)
BLUR_KERNEL = 7


def chroma_vectors(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> each pixel minus its smallest channel: zero on grey, the colour's direction on colour."""
    return images - images.min(1, keepdim=True).values


def silhouette(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) in [0, 1]: chroma over the image's peak chroma (at least MIN_CHROMA)."""
    chroma = chroma_vectors(images).max(1, keepdim=True).values
    return (chroma / chroma.flatten(1).max(1).values.clamp_min(MIN_CHROMA).view(-1, 1, 1, 1)).clamp(0, 1)


class ShapeClassifier(FixedClassifier):
    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB images (N, 3, H, W) in [0, 1] -> predicted shapes (N,)."""
        return super().predict(silhouette(pixels))


def shape_classifier_path(size: int) -> Path:
    return writable_cache("generation") / f"classifier-shapes-silhouette-{size}px.pt"


def _u8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


def silhouette_views(ds: Dataset) -> Dataset:
    """Training silhouettes sharp and under each blur (labels repeated); test silhouettes sharp."""
    x = ds.train_x.float() / 255
    views = [x, *(gaussian_blur(x, BLUR_KERNEL, s) for s in BLUR_SIGMAS)]
    return replace(ds, train_x=torch.cat([_u8(silhouette(v)) for v in views]), train_y=ds.train_y.repeat(len(views)),
                   test_x=_u8(silhouette(ds.test_x.float() / 255)))


def shape_classifier(ds: Dataset, data_root: str | None, log=print) -> ShapeClassifier:
    """The cached silhouette classifier of ``shapes`` at this image size, or trained now (about 20 s on one thread)."""
    path = shape_classifier_path(ds.image_size)
    net = classifier_net(1, ds.num_classes)
    if path.is_file():
        state = load_checkpoint(path)
        net.load_state_dict(state["model"])
        return ShapeClassifier(net, state["info"])
    full = load_dataset(ds.name, data_root, PER_CLASS, None, ds.image_size)
    log(f"training the fixed {ds.name} shape classifier on {len(full.train_y)} real training silhouettes "
        f"(once; cached at {path})")
    t0 = time.perf_counter()
    views = silhouette_views(full)
    fit(net, views)
    clf = ShapeClassifier(net, {"mean_std": [list(m) for m in views.mean_std()]})
    acc = clf.accuracy(full.test_x.float() / 255, full.test_y)
    clf.info |= {"arch": "2-conv + linear convnet on the chroma silhouette", "n_train": len(full.train_y),
                 "train_views": f"sharp + Gaussian blur sigma {', '.join(map(str, BLUR_SIGMAS))}", "epochs": EPOCHS,
                 "test_top1": acc, "n_test": len(full.test_y), "test_split": "real held-out (shape, colour) pairs",
                 "train_s": round(time.perf_counter() - t0, 1)}
    save_checkpoint(path, {"model": net.state_dict(), "epoch": EPOCHS, "info": clf.info})
    log(f"fixed shape classifier: {acc:.2%} on the {len(full.test_y)} real held-out test images")
    return clf
