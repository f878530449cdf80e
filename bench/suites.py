"""Named suites: functions returning the list of RunConfig to run. Docstrings give the command and the
expected numbers (measured; see README), as big_vision's presets do.

Both suites include EVERY registered method, so a new method file joins them with no edit here.
"""

from __future__ import annotations

from collections.abc import Callable

import methods
from bench.config import RunConfig
from bench.registry import Registry

SUITES: Registry[Callable[[], list[RunConfig]]] = Registry("suite")


@SUITES.register("smoke")
def smoke() -> list[RunConfig]:
    """Every registered method, 1 epoch on scikit-learn's 8x8 digits, batch 128, seed 0; the tests run it.

    Command: ``repbench run --suite smoke``. Target: under 60 s on 2 cores. Numbers are meaningless
    beyond "finite, recorded, every protocol present".
    """
    return [RunConfig(method=m, dataset="digits", backbone=backbone_for(m), epochs=1, batch_size=128,
                      seed=0, suite="smoke") for m in methods.METHODS.names()]


def backbone_for(method: str, default: str = "convnet") -> str:
    """The suite's backbone, unless the method only exists on one (MAE needs a ViT's patch tokens)."""
    return getattr(methods.METHODS.get(method), "required_backbone", default)


QUICK_PER_CLASS = 400
QUICK_EPOCHS = 2
QUICK_SEEDS = (0, 1, 2)


@SUITES.register("quick")
def quick() -> list[RunConfig]:
    """Every registered method on Fashion-MNIST, convnet (MAE: its ViT), seeds 0/1/2: the main job.

    Budget: 400 training images per class (4,000, one fixed seeded subset), 2 epochs, batch 256, the
    unified recipe (SGD momentum 0.9, lr 0.06 x bs/256, wd 5e-4, cosine); protocols on the 4,000
    training features and the full 10,000-image test split. Command: ``repbench run --suite quick``
    (measured on 2 cores: 568 s for the 54 runs from a fresh clone of 6241b7b, 833 s at 46f6ff1 on another day;
    target under 20 minutes). Expected: the raw-pixel floor at kNN 80.8 / linear 82.4 %. Numbers: README.md.
    """
    return [RunConfig(method=m, dataset="fashion-mnist", backbone=backbone_for(m), epochs=QUICK_EPOCHS,
                      batch_size=256, seed=s, per_class=QUICK_PER_CLASS, suite="quick")
            for m in methods.METHODS.names() for s in QUICK_SEEDS]
import bench.ablate  # noqa: E402,F401  (registers the quick-ablation suite)
import bench.check  # noqa: E402,F401  (registers the ci suite)
