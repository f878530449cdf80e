"""The named suites of `repbench run --suite`: functions returning the list of RunConfig to run. Each docstring
gives the command and what to expect, as big_vision's configs do; measured tables live in results/.

Both include every registered method, so a new method file joins them with no edit here.
"""

from __future__ import annotations

from bench.config import RunConfig
from bench.experiments.scales import backbone_for
from methods import METHODS

QUICK_PER_CLASS = 400
# Batch and epochs by measurement (results/quick/README.md, budget_curve.csv): smaller, more numerous
# steps gained more over random init for less (SimCLR seed 0 under AdamW lr 1e-3: batch 64 x 248 steps beat batch 256 x 120
# steps, twice the images, on kNN and linear). 4 epochs of batch 64 is about twice the former suite's images (2 epochs
# of batch 256, 8 to 15 minutes): the estimate that fits 20 minutes on 2 cores.
QUICK_BATCH = 64
QUICK_EPOCHS = 4
QUICK_TEST_PER_CLASS: int | None = None  # the full 10,000-image test split
QUICK_SEEDS = (0, 1, 2)
FLOOR = "random"  # the untrained encoder every method is paired with (bench/report.py: "vs random init")
# The floor's encoder as the method builds it: MAE's ViT pools patch tokens by mean (methods/mae.py), the ViT's
# default is its CLS token.
FLOOR_BACKBONE_ARGS = {"vit": {"pool": "mean"}}


def smoke() -> list[RunConfig]:
    """Every registered method, 1 epoch on scikit-learn's 8x8 digits, batch 128, seed 0; the tests run it.

    Command: ``repbench run --suite smoke`` (about a minute on 2 cores). Numbers are meaningless beyond
    "finite, recorded, every protocol present".
    """
    return [RunConfig(method=m, dataset="digits", backbone=backbone_for(m, "convnet"), epochs=1, batch_size=128,
                      seed=0, suite="smoke") for m in METHODS.names()]


def quick() -> list[RunConfig]:
    """Every registered method on Fashion-MNIST, convnet (MAE: its ViT), seeds 0/1/2: the main job.

    Budget: 400 training images per class (4,000, one fixed seeded subset), 4 epochs of batch 64 (248 SGD steps),
    the unified recipe (SGD momentum 0.9, lr 0.06 x bs/256, wd 5e-4, cosine); protocols on the 4,000 training
    features and the full 10,000-image test split. The random-init floor runs on every backbone a method uses (a
    random ViT for MAE), so each method's table row pairs it with its own encoder's floor, seed by seed.
    Command: ``repbench run --suite quick`` (``bash scripts/quick.sh``; estimated under 20 minutes on 2 cores).
    Expected: results/quick/table.md.
    """
    pairs = [(m, backbone_for(m, "convnet")) for m in METHODS.names()]
    pairs += [(FLOOR, b) for b in sorted({b for _, b in pairs} - {backbone_for(FLOOR, "convnet")})]
    return [RunConfig(method=m, dataset="fashion-mnist", backbone=b, epochs=QUICK_EPOCHS, batch_size=QUICK_BATCH, seed=s,
                      per_class=QUICK_PER_CLASS, test_per_class=QUICK_TEST_PER_CLASS, suite="quick",
                      backbone_args=FLOOR_BACKBONE_ARGS.get(b, {}) if m == FLOOR else {})
            for m, b in pairs for s in QUICK_SEEDS]


STANDARD_BATCH = 512
# The epoch count is an estimate until scripts/gpu_check.sh measures the suite on one H200 (results/gpu/README.md):
# SimCLR on ResNet-18 ran 6,449 img/s there (batch 256), 9.3 s per 60k-image epoch, BYOL ~1.3x slower; 45 SGD
# runs x 2 epochs ~ 840 s of training one at a time, ~340 s at --jobs 4 if four runs overlap 2.5x on a GPU that
# waits on augmentation 59% of the time; plus ~5 s of features and protocols per run (57 runs, ~115 s at --jobs 4):
# ~455 s in all, under the 10 minutes with margin for the slower methods. Raise it once the measured rate allows.
STANDARD_EPOCHS = 2
STANDARD_SEEDS = (0, 1, 2)


def standard() -> list[RunConfig]:
    """Every registered method on the full Fashion-MNIST (60,000 train / 10,000 test, 28 px), ResNet-18 with the
    CIFAR stem (MAE: its ViT), seeds 0/1/2, every protocol; the random-init floor on each backbone used.

    Budget: STANDARD_EPOCHS epochs of batch 512 under the unified recipe, sized so the whole suite takes <= 10
    minutes wall on one H200 with ``--jobs 4`` (an estimate from measured rates until the device script times it).
    Command: ``repbench run --suite standard --device cuda --jobs 4`` (``bash scripts/gpu_check.sh``). Expected:
    results/standard/ once measured.
    """
    pairs = [(m, backbone_for(m, "resnet18")) for m in METHODS.names()]
    pairs += [(FLOOR, b) for b in sorted({b for _, b in pairs} - {backbone_for(FLOOR, "resnet18")})]
    return [RunConfig(method=m, dataset="fashion-mnist", backbone=b, epochs=STANDARD_EPOCHS, batch_size=STANDARD_BATCH,
                      seed=s, suite="standard",
                      backbone_args={"small_stem": True} if b == "resnet18" else
                      (FLOOR_BACKBONE_ARGS.get(b, {}) if m == FLOOR else {}))
            for s in STANDARD_SEEDS for m, b in pairs]  # seed-major: a run cut short by its budget has every method
