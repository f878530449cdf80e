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
