"""A trained method's evaluation: its features computed once, every protocol run on those tensors, then the
method's own metrics. Everything a protocol sees is made here; protocols never see a model or a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.augment import normalise
from bench.config import RunConfig
from bench.data import Dataset
from bench.features import extract
from bench.store import write_json
from methods.base import Method, TextTower
from protocols import PROTOCOLS
from protocols.base import ClassSet, Features, Metrics, TextSide
from protocols.zero_shot import DEFAULT_TEMPLATES, class_embeddings, clip_benchmark_record


def evaluate(method: Method, ds: Dataset, cfg: RunConfig) -> Metrics:
    """Every protocol of ``cfg`` (all registered when None) on the encoder's features, and ``extra_metrics``."""
    method.eval()
    mean, std = ds.mean_std()
    train = Features(extract(method.encoder, ds.train_x, mean, std, cfg.device), ds.train_y, ds.num_classes, "train")
    test_x = extract(method.encoder, ds.test_x, mean, std, cfg.device)
    text = text_side(method, ds, test_x, cfg.device) if isinstance(method, TextTower) else None
    test = Features(test_x, ds.test_y, ds.num_classes, "test", text)
    metrics: dict[str, Any] = {}
    for name in cfg.protocols if cfg.protocols is not None else PROTOCOLS.names():
        metrics.update(PROTOCOLS.get(name)(train, test, seed=cfg.seed, device=cfg.device))
    with torch.no_grad():
        metrics.update(method.extra_metrics(normalise(ds.test_x, mean, std).to(cfg.device)))
    return metrics


@torch.no_grad()
def text_side(method: TextTower, ds: Dataset, test_features: torch.Tensor, device: str) -> TextSide:
    """The text tower's embeddings zero-shot and retrieval score: test images, class prompts, test captions."""
    templates = tuple(ds.extras.get("templates") or DEFAULT_TEMPLATES)

    def classes(key: str, names, y: torch.Tensor) -> ClassSet:
        if len(y) != len(ds.test_y):
            return ClassSet(key, tuple(names), None, None,
                            f"labels for {len(y)} test images, split has {len(ds.test_y)} (test subset?)")
        return ClassSet(key, tuple(names), class_embeddings(lambda t: method.encode_text(t).cpu(), names, templates), y)

    sets = [classes("zero-shot", ds.classes, ds.test_y)]
    sets += [classes(f"zero-shot-{name}", cs["classes"], torch.as_tensor(cs["test_y"]))
             for name, cs in ds.extras.get("class_sets", {}).items()]
    captions = caption_of_image = None
    if ds.test_text is not None and len(ds.test_text) == len(ds.test_y):
        unique = sorted(set(ds.test_text))
        index = {t: j for j, t in enumerate(unique)}
        captions = method.encode_text(unique).cpu()
        caption_of_image = torch.tensor([index[t] for t in ds.test_text])
    image = method.project_image(test_features.to(device)).float().cpu()
    return TextSide(image, tuple(sets), float(method.scale().detach()), len(templates), method.caption_source,
                    captions, caption_of_image)


def write_clip_benchmark(metrics: Metrics, run_dir: Path, dataset: str, model: str, pretrained: str = "") -> list[Path]:
    """Zero-shot results also in CLIP_benchmark's file shape, ``<run_dir>/clip_benchmark_<task>.json`` per task,
    to sit beside its published numbers; returns the paths."""
    paths = []
    for task, key in (("zeroshot_classification", "zero-shot"), ("zeroshot_retrieval", "retrieval")):
        if key in metrics and "error" not in metrics[key]:
            path = Path(run_dir) / f"clip_benchmark_{task}.json"
            write_json(path, clip_benchmark_record(metrics, dataset, model, task, pretrained))
            paths.append(path)
    return paths
