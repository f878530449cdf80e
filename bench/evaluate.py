"""A trained method's evaluation: its features computed once, every protocol run on those tensors, then the
method's own metrics. Everything a protocol sees is made here; protocols never see a model or a dataset.

Skipped entries (protocols/base.py's docstring has the rule) are said here, once each, on stderr; the checks made
before any work (``check_before_training``, ``refuse_unproducible``) ask the protocols' ``LIMITS``."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.augment import normalise
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data import Dataset
from bench.features import extract_sharded
from bench.store import write_json
from methods.base import Method, TextTower
from protocols import LIMITS, PROTOCOLS
from protocols.base import ClassSet, Features, Metrics, TextSide, check_labels
from protocols.limits import Shape, is_skipped

# A subset of CLIP's 80 ImageNet prompts (openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb),
# the ones that make sense for small single-object images; datasets may bring their own.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """Prompt ensembling. Shape: C names, T templates -> (C, D), unit rows."""
    texts = [t.format(name) for name in class_names for t in templates]
    emb = F.normalize(encode_text(texts).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def evaluate(method: Method, ds: Dataset, cfg: RunConfig) -> Metrics:
    """Every protocol of ``cfg`` (all registered when None) on the encoder's features, and ``extra_metrics``.
    Under torchrun every rank calls it: the features are extracted sharded over the ranks and gathered to rank 0
    (``extract_sharded``), which alone runs the protocols; the other ranks get {}."""
    method.eval()
    mean, std = ds.mean_std()
    train_x = extract_sharded(method.encoder, ds.train_x, mean, std, cfg.device)
    test_x = extract_sharded(method.encoder, ds.test_x, mean, std, cfg.device)
    if train_x is None or test_x is None:
        return {}
    train = Features(train_x, ds.train_y, ds.num_classes, "train")
    text = text_side(method, ds, test_x, cfg.device) if isinstance(method, TextTower) else None
    test = Features(test_x, ds.test_y, ds.num_classes, "test", text)
    names = cfg.protocols if cfg.protocols is not None else PROTOCOLS.names()
    metrics: dict[str, Any] = run_protocols(names, train, test, seed=cfg.seed, device=cfg.device,
                                            settings=cfg.protocol_args)
    with torch.no_grad():
        metrics.update(method.extra_metrics(normalise(ds.test_x, mean, std).to(cfg.device)))
    return metrics


def run_protocols(names: Iterable[str], train: Features, test: Features, *, seed: int, device: str,
                  log: Callable[[str], None] | None = None, settings: dict[str, dict[str, Any]] | None = None) -> Metrics:
    """Every named protocol's entries, each run with its ``settings`` (keyword arguments); each skipped entry said
    once (``log``, default stderr)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    metrics: Metrics = {}
    for name in names:
        out = PROTOCOLS.get(name)(train, test, seed=seed, device=device, **(settings or {}).get(name, {}))
        for key, entry in out.items():
            if is_skipped(entry):
                log(f"repbench: skipped {key}: {entry['skipped']}")
        metrics.update(out)
    return metrics


def check_protocol_args(settings: dict[str, dict[str, Any]]) -> None:
    """Each protocol named is registered and takes every setting given (a keyword of its ``evaluate``)."""
    for name, kwargs in settings.items():
        fn = PROTOCOLS.get(name)
        accepted = [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
        unknown = sorted(set(kwargs) - {p.name for p in accepted} - {"seed", "device"})
        if unknown or {"seed", "device"} & set(kwargs):
            bad = unknown[0] if unknown else sorted({"seed", "device"} & set(kwargs))[0]
            names = ", ".join(p.name for p in accepted if p.name not in ("seed", "device")) or "none"
            raise UsageError(f"protocol_args.{name}.{bad} is not a setting of the {name} protocol; it takes: {names}")


def _limits_of(name: str, shape: Shape, settings: dict[str, dict[str, Any]] | None) -> dict[str, str]:
    fn = LIMITS.get(name)
    params = inspect.signature(fn).parameters
    return fn(shape, **{k: v for k, v in (settings or {}).get(name, {}).items() if k in params})


def refuse_unproducible(names: Iterable[str], shape: Shape, fix: str,
                        settings: dict[str, dict[str, Any]] | None = None) -> None:
    """UsageError for the first protocol of ``names`` that would give nothing but skipped entries on ``shape``."""
    for name in names:
        reasons = _limits_of(name, shape, settings)
        if reasons and all(reasons.values()):
            key, reason = next(iter(reasons.items()))
            raise UsageError(f"protocol {name} cannot run on this data: {key} {reason}; {fix}")


def check_before_training(cfg: RunConfig, ds: Dataset) -> None:
    """Before anything is trained or written: see ``check_data``."""
    check_data(ds, cfg.protocols, cfg.device, cfg.protocol_args)


def check_data(ds: Dataset, protocols: Sequence[str] | None, device: str,
               settings: dict[str, dict[str, Any]] | None = None) -> None:
    """Before features exist: the labels are usable, and no protocol named in ``protocols`` (None: every one, each
    giving what it can) would give only skipped entries on this data's sample counts."""
    check_labels(ds.train_y, "train", ds.num_classes)
    check_labels(ds.test_y, "test", ds.num_classes)
    if protocols:
        shape = Shape(np.bincount(ds.train_y.cpu().numpy(), minlength=ds.num_classes), len(ds.test_y), None, device)
        refuse_unproducible(protocols, shape, "leave it out of --protocols or use more images per class", settings)


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


def clip_benchmark_record(metrics: Metrics, dataset: str, model: str, task: str = "zeroshot_classification",
                          pretrained: str = "") -> dict[str, Any]:
    """One result in CLIP_benchmark's file shape ({"dataset", "model", "pretrained", "task", "metrics"}).

    ``task`` is ``zeroshot_classification`` (from ``metrics["zero-shot"]``: acc1, acc5,
    mean_per_class_recall) or ``zeroshot_retrieval`` (from ``metrics["retrieval"]``; CLIP_benchmark's
    ``image_retrieval_recall@k`` is text->image, ``text_retrieval_recall@k`` image->text). Fractions 0..1.
    """
    if task == "zeroshot_classification":
        e = metrics["zero-shot"]
        values = {"acc1": e["top1"], "acc5": e["top5"], "mean_per_class_recall": e["mean_per_class_recall"]}
    elif task == "zeroshot_retrieval":
        e = metrics["retrieval"]
        ks = [key.removeprefix("t2i_r") for key in e if key.startswith("t2i_r")]
        values = {}
        for k in ks:
            values[f"image_retrieval_recall@{k}"] = e[f"t2i_r{k}"]
            values[f"text_retrieval_recall@{k}"] = e[f"i2t_r{k}"]
    else:
        raise ValueError(f"task must be zeroshot_classification or zeroshot_retrieval, not {task!r}")
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": values}
