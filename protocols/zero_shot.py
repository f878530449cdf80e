"""Zero-shot classification and image-text retrieval for methods with a text tower (CLIP).

Follows openai/CLIP's prompt ensembling and LAION CLIP_benchmark's metrics: each class is embedded by
filling every prompt template with its name, L2-normalising each, averaging and re-normalising; logits are
the method's logit scale x cosine. Reported: top-1, top-5 (NaN with fewer than 5 classes) and mean
per-class recall (sklearn ``balanced_accuracy_score``, as CLIP_benchmark does) on the test split.

Keys: ``zero-shot`` uses the dataset's ``classes``; datasets that define more class sets in
``extras["class_sets"]`` (``shapes``: shape, colour, combination) get one ``zero-shot-<name>`` key each.
``retrieval`` holds recall@1/5/10 image->text (``i2t_r*``) and text->image (``t2i_r*``) over the test
captions of ``retrieval_images`` images (a seeded subsample); identical caption strings are one text, and
a query counts when any of its positives is in its top k. Methods without ``encode_text`` get no entry.

``clip_benchmark_record`` turns these entries into CLIP_benchmark's result-file shape.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from protocols.base import PROTOCOLS, Features, Metrics

# A subset of CLIP's 80 ImageNet prompts (openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb),
# the ones that make sense for small single-object images; datasets may bring their own (extras["templates"]).
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
RECALL_KS = (1, 5, 10)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """Prompt ensembling. Shape: C names, T templates -> (C, D), unit rows."""
    texts = [t.format(name) for name in class_names for t in templates]
    emb = F.normalize(encode_text(texts).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """top1, top5 (NaN below 5 classes) and mean per-class recall. Shape: logits (N, C), y (N,)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top == y[:, None]
    pred = top[:, 0]
    with warnings.catch_warnings():  # predictions of classes absent from the test split are expected here
        warnings.simplefilter("ignore")
        recall = balanced_accuracy_score(y.numpy(), pred.numpy())
    return {"top1": float(hit[:, 0].float().mean()),
            "top5": float(hit.any(1).float().mean()) if logits.shape[1] >= 5 else math.nan,
            "mean_per_class_recall": float(recall)}


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_of_image: torch.Tensor,
                     ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@k both ways. Shape: image_emb (N, D), text_emb (M, D), text_of_image (N,) in 0..M-1.

    Image i's positive is text ``text_of_image[i]``; text j's positives are the images pointing to j.
    """
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    out = {}
    for k in ks:
        i2t = sim.topk(min(k, sim.shape[1]), dim=1).indices
        t2i = sim.T.topk(min(k, sim.shape[0]), dim=1).indices
        out[f"i2t_r{k}"] = float((i2t == text_of_image[:, None]).any(1).float().mean())
        out[f"t2i_r{k}"] = float((text_of_image[t2i] == torch.arange(len(text_emb))[:, None]).any(1).float().mean())
    return out


def _image_embeddings(method, test: Features, device) -> torch.Tensor:
    """Joint-space test embeddings: the cached backbone features through ``project_image`` when they are
    backbone features, else the test images through ``encode_image`` (eval mode, un-augmented)."""
    if hasattr(method, "project_image") and test.meta.get("layer", "encoder") in ("encoder", "backbone"):
        return method.project_image(test.x.to(device)).float().cpu()
    ds = test.meta["dataset"]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.mean_std())
    out = [method.encode_image(((ds.test_x[i:i + 1024].float() / 255 - mean) / std).to(device)).float().cpu()
           for i in range(0, len(ds.test_x), 1024)]
    return torch.cat(out)


def _class_sets(ds, test: Features) -> list[tuple[str, list[str], torch.Tensor | None, str]]:
    """(key, class names, test labels or None when misaligned, note) for every class definition."""
    sets = [("zero-shot", list(ds.classes), test.y, "")]
    for name, cs in (ds.extras or {}).get("class_sets", {}).items():
        y = torch.as_tensor(cs["test_y"])
        ok = len(y) == len(test.y)
        sets.append((f"zero-shot-{name}", list(cs["classes"]), y if ok else None,
                     "" if ok else f"labels for {len(y)} test images, split has {len(test.y)} (test subset?)"))
    return sets


@PROTOCOLS.register("zero-shot")
def evaluate(train: Features, test: Features, seed: int = 0, templates: Sequence[str] | None = None,
             retrieval_images: int = 1000) -> Metrics:
    method = test.meta.get("method")
    if method is None or not hasattr(method, "encode_text"):
        return {}
    ds, device = test.meta["dataset"], test.meta.get("device", "cpu")
    templates = tuple(templates or (ds.extras or {}).get("templates") or DEFAULT_TEMPLATES)
    scale = float(method.scale().detach()) if hasattr(method, "scale") else 100.0  # CLIP_benchmark's fixed 100
    common = {"split": test.meta.get("split", "test"), "seed": seed, "logit_scale": round(scale, 4),
              "captions": getattr(method, "caption_source", "dataset"), "images": len(test.y)}
    was_training = method.training
    method.eval()
    out: Metrics = {}
    with torch.no_grad():
        image = F.normalize(_image_embeddings(method, test, device), dim=-1)
        for key, names, y, note in _class_sets(ds, test):
            entry: dict[str, Any] = {**common, "templates": len(templates), "num_classes": len(names), "classes": names,
                                     "chance_top1": 1 / len(names)}
            if y is None:
                out[key] = {**entry, "error": note}
                continue
            weights = class_embeddings(lambda t: method.encode_text(t).cpu(), names, templates)
            logits = scale * image @ weights.T
            present = sorted(set(y.tolist()))
            out[key] = {**classification_metrics(logits, y), **entry, "classes_in_split": len(present)}
        if ds.test_text is not None and len(ds.test_text) == len(test.y):
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(test.y), generator=g)[:retrieval_images].sort().values
            captions = [ds.test_text[i] for i in pick.tolist()]
            unique = sorted(set(captions))
            index = {t: j for j, t in enumerate(unique)}
            text_emb = method.encode_text(unique).cpu()
            owner = torch.tensor([index[t] for t in captions])
            out["retrieval"] = {**retrieval_recall(image[pick], text_emb, owner), **common, "images": len(pick),
                                "texts": len(unique), "positives": "identical caption strings are one text"}
    method.train(was_training)
    return out


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
        values = {}
        for k in RECALL_KS:
            values[f"image_retrieval_recall@{k}"] = e[f"t2i_r{k}"]
            values[f"text_retrieval_recall@{k}"] = e[f"i2t_r{k}"]
    else:
        raise ValueError(f"task must be zeroshot_classification or zeroshot_retrieval, not {task!r}")
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": values}


def write_clip_benchmark(metrics: Metrics, run_dir: Path, dataset: str, model: str, pretrained: str = "") -> list[Path]:
    """Write ``<run_dir>/clip_benchmark_<task>.json`` for each task present in ``metrics``; returns the paths."""
    from bench.store import write_json

    paths = []
    for task, key in (("zeroshot_classification", "zero-shot"), ("zeroshot_retrieval", "retrieval")):
        if key in metrics and "error" not in metrics[key]:
            path = Path(run_dir) / f"clip_benchmark_{task}.json"
            write_json(path, clip_benchmark_record(metrics, dataset, model, task, pretrained))
            paths.append(path)
    return paths
