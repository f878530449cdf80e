"""Zero-shot classification and image-text retrieval, for methods with a text tower (CLIP).

LAION CLIP_benchmark's metrics on what the harness embeds (``Features.text``, bench/evaluate.py): each class
definition's names through openai/CLIP's prompt ensembling, and the test images in the joint space; logits are
the method's logit scale x cosine. Reported: top-1, top-5 (NaN with fewer than 5 classes) and mean
per-class recall on the test split.

Keys: ``zero-shot`` uses the dataset's classes; datasets that define more class sets (``shapes``: shape, colour,
combination) get one ``zero-shot-<name>`` key each. ``retrieval`` holds recall@1/5/10 image->text (``i2t_r*``)
and text->image (``t2i_r*``) over the captions of ``retrieval_images`` test images (a seeded subsample);
identical caption strings are one text, and a query counts when any of its positives is in its top k. Features
without a text side give no entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from protocols.base import Features, Metrics, TextSide, classification_metrics, validated
from protocols.limits import Shape

RECALL_KS = (1, 5, 10)


def limits(shape: Shape, *, retrieval_images: int = 1000) -> dict[str, str]:
    """Nothing to skip that a shape can tell: the keys come from the text side, and every tensor is no larger than
    the test images' and captions' embeddings the harness already holds, bar the (images x captions) similarity of
    at most ``retrieval_images`` images."""
    return {}


@validated
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
