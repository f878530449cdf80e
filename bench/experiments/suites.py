"""The named suites of `repbench run --suite`: functions returning the list of RunConfig to run. Each docstring
gives the command and what to expect, as big_vision's configs do; measured tables live in results/.

Both include every registered method, so a new method file joins them with no edit here.
"""

from __future__ import annotations

from bench.config import RunConfig
from bench.experiments.scales import backbone_for
from methods import METHODS

QUICK_PER_CLASS = 400
QUICK_EPOCHS = 2
QUICK_SEEDS = (0, 1, 2)


def smoke() -> list[RunConfig]:
    """Every registered method, 1 epoch on scikit-learn's 8x8 digits, batch 128, seed 0; the tests run it.

    Command: ``repbench run --suite smoke`` (about a minute on 2 cores). Numbers are meaningless beyond
    "finite, recorded, every protocol present".
    """
    return [RunConfig(method=m, dataset="digits", backbone=backbone_for(m, "convnet"), epochs=1, batch_size=128,
                      seed=0, suite="smoke") for m in METHODS.names()]


def quick() -> list[RunConfig]:
    """Every registered method on Fashion-MNIST, convnet (MAE: its ViT), seeds 0/1/2: the main job.

    Budget: 400 training images per class (4,000, one fixed seeded subset), 2 epochs, batch 256, the unified
    recipe (SGD momentum 0.9, lr 0.06 x bs/256, wd 5e-4, cosine); protocols on the 4,000 training features and
    the full 10,000-image test split. Command: ``repbench run --suite quick`` (``bash scripts/quick.sh``; about
    10 minutes on 2 cores). Expected: results/quick/table.md, e.g. the raw-pixel floor at kNN 80.8 / linear 82.4 %.
    """
    return [RunConfig(method=m, dataset="fashion-mnist", backbone=backbone_for(m, "convnet"), epochs=QUICK_EPOCHS,
                      batch_size=256, seed=s, per_class=QUICK_PER_CLASS, suite="quick")
            for m in METHODS.names() for s in QUICK_SEEDS]
