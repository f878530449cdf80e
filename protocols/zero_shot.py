"""Zero-shot classification and image-text retrieval, for methods with a text tower (CLIP).

Follows openai/CLIP's prompt ensembling and LAION CLIP_benchmark's metrics. The harness embeds, for each class
definition, every prompt template filled with each class name (L2-normalised, averaged, re-normalised:
``class_embeddings``) and hands them over with the test images' joint-space embeddings (``Features.text``);
logits are the method's logit scale x cosine. Reported: top-1, top-5 (NaN with fewer than 5 classes) and mean
per-class recall on the test split.

Keys: ``zero-shot`` uses the dataset's classes; datasets that define more class sets (``shapes``: shape, colour,
combination) get one ``zero-shot-<name>`` key each. ``retrieval`` holds recall@1/5/10 image->text (``i2t_r*``)
and text->image (``t2i_r*``) over the captions of ``retrieval_images`` test images (a seeded subsample);
identical caption strings are one text, and a query counts when any of its positives is in its top k. Features
without a text side give no entry.

``clip_benchmark_record`` turns these entries into CLIP_benchmark's result-file shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from protocols.base import Features, Metrics, TextSide, classification_metrics

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
RECALL_KS = (1, 5, 10)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """Prompt ensembling. Shape: C names, T templates -> (C, D), unit rows."""
    texts = [t.format(name) for name in class_names for t in templates]
    emb = F.normalize(encode_text(texts).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             retrieval_images: int = 1000) -> Metrics:
    text = test.text
    if text is None:
        return {}
    common = {"split": test.split, "seed": seed, "logit_scale": round(text.logit_scale, 4),
              "captions": text.caption_source, "images": len(test.y)}
    image = F.normalize(text.image.float(), dim=-1)
    out: Metrics = {}
    for cs in text.class_sets:
        entry: dict[str, Any] = {**common, "templates": text.templates, "num_classes": len(cs.names),
                                 "classes": list(cs.names), "chance_top1": 1 / len(cs.names)}
        if cs.y is None:
            out[cs.key] = {**entry, "error": cs.note}
            continue
        logits = text.logit_scale * image @ cs.text.float().T
        out[cs.key] = {**classification_metrics(logits, cs.y, len(cs.names)), **entry,
                       "classes_in_split": len(set(cs.y.tolist()))}
    if text.captions is not None:
        out["retrieval"] = {**common, **retrieval(image, text, seed, retrieval_images)}
    return out


def retrieval(image: torch.Tensor, text: TextSide, seed: int, images: int) -> dict[str, Any]:
    """Recall@k both ways over the captions of a seeded subsample of the test images."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(image), generator=g)[:images].sort().values
    owner = text.caption_of_image[pick]
    used, text_of_image = owner.unique(return_inverse=True)  # the sample's distinct captions, in caption order
    return {**retrieval_recall(image[pick], text.captions[used], text_of_image), "images": len(pick), "texts": len(used),
            "positives": "identical caption strings are one text"}


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
