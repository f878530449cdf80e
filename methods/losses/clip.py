"""CLIP's image-text contrastive loss (Radford et al. 2021). Shape letters: N batch, D features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss"]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric cross-entropy over the batch's image-text similarities (CLIP Fig. 3).

    Row i of ``image_emb`` and row i of ``text_emb`` are a pair; every other row in the batch is a
    negative. Both are L2-normalised here; ``logit_scale`` is the multiplier itself (CLIP's
    ``exp(t)``, not ``t``). The loss is the mean of the image->text and text->image cross-entropies.

    Shape: image_emb (N, D), text_emb (N, D), logit_scale scalar -> scalar.
    """
    image_emb, text_emb = F.normalize(image_emb, dim=1), F.normalize(text_emb, dim=1)
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
