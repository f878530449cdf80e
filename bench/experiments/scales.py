"""The data and budget an ablation or a search runs at, and the run config of one method at that scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.config import RunConfig
from methods import METHODS
from methods.spec import UNIFIED_RECIPE

METRIC = "knn"  # result key the ablations and searches score: weighted cosine k-NN, k=20 (protocols/knn.py)


@dataclass(frozen=True)
class Scale:
    """Data and budget shared by every run of an ablation or a search at this scale."""

    name: str
    dataset: str
    per_class: int | None
    test_per_class: int | None
    epochs: int
    batch_size: int
    backbone: str = "convnet"


SCALES = {
    # Tests: 30 train / 10 test digits per class (300 / 100 images), one epoch; seconds per run.
    "smoke": Scale("smoke", "digits", 30, 10, epochs=1, batch_size=64),
    "quick": Scale("quick", "fashion-mnist", 100, 100, epochs=6, batch_size=64),
    # The collapse ablations (SimSiam stop-gradient, BYOL predictor, DINO centering / sharpening): the quick data,
    # 4x its epochs (360 steps); the committed quick runs (96 steps) ended with the collapsing cells still spread.
    "collapse": Scale("collapse", "fashion-mnist", 100, 100, epochs=24, batch_size=64),
    # 10x collapse (3600 steps): SimSiam without stop-gradient and BYOL without predictor were still spread at 360.
    "collapse-long": Scale("collapse-long", "fashion-mnist", 100, 100, epochs=240, batch_size=64),
}


def backbone_for(method: str, default: str) -> str:
    """The suite's backbone, unless the method only exists on one (MAE needs a ViT's patch tokens)."""
    return METHODS.get(method).required_backbone or default


def scaled_config(scale: Scale, method: str, recipe: str = "unified", **fields: Any) -> RunConfig:
    """The method at this scale, seed 0, under its paper recipe or the unified one; ``fields`` override."""
    cls = METHODS.get(method)
    base = dict(method=method, dataset=scale.dataset, backbone=backbone_for(method, scale.backbone), epochs=scale.epochs,
                batch_size=scale.batch_size, seed=0, recipe=cls.paper_recipe if recipe == "paper" else UNIFIED_RECIPE,
                recipe_name=recipe, per_class=scale.per_class, test_per_class=scale.test_per_class)
    return RunConfig(**{**base, **fields})


def metric_of(record: dict[str, Any]) -> float:
    """The scored value of a record: METRIC's top-1, NaN when the run has none."""
    entry = record.get("metrics", {}).get(METRIC, {})
    value = entry.get("top1") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) else float("nan")


def trainable_methods() -> list[str]:
    """The methods trained by SGD (the ones with hyperparameters to search and recipes to compare)."""
    return [name for name, cls in METHODS.items() if cls.trained_by == "sgd"]
