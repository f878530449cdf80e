"""Text side of image-text methods: a word-level tokeniser and two text encoders, (N, L) ids -> (N, D).

- ``WordTokenizer``: lower-cased words (hyphen/apostrophe compounds kept whole, punctuation as its own
  token) from the training captions, ordered by count then alphabetically so the vocabulary is the same
  on every machine; ids 0/1/2 are pad/unknown/end-of-text. Every sequence ends with EOT, then padding.
- ``CBOW``: mean of the word embeddings of the non-pad tokens (the bag-of-words baseline of CLIP Fig. 2).
- ``TextTransformer``: a small pre-norm Transformer; ``pooling="eot"`` reads the EOT position under a
  causal mask (CLIP, Radford et al. 2021, Sec. 2.4), ``pooling="cls"`` prepends a learned token and reads
  it with bidirectional attention (BERT style).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

from bench.core.errors import UsageError

PAD, UNK, EOT = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<eot>")
WORD_RE = re.compile(r"[a-z0-9]+(?:[-'/][a-z0-9]+)*|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """``"A T-shirt/top, please"`` -> ``["a", "t-shirt/top", ",", "please"]``."""
    return WORD_RE.findall(text.lower())


class WordTokenizer:
    """Word-level vocabulary built from ``texts``; unseen words map to the unknown id."""

    def __init__(self, texts: Iterable[str], max_len: int = 32, min_count: int = 1) -> None:
        counts = Counter(w for t in texts for w in words(t))
        vocab = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.itos = [*SPECIALS, *vocab]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, text: str) -> list[int]:
        """Token ids of one text, truncated so that EOT always fits."""
        return [self.stoi.get(w, UNK) for w in words(text)][: self.max_len - 1] + [EOT]

    def encode(self, texts: list[str], length: int | None = None) -> torch.Tensor:
        """Shape: M texts -> (M, L) int64, L = ``length`` or the longest sequence (at most ``max_len``)."""
        seqs = [self.ids(t) for t in texts]
        length = length or max((len(s) for s in seqs), default=1)
        out = torch.full((len(seqs), length), PAD, dtype=torch.int64)
        for i, s in enumerate(seqs):
            s = s if len(s) <= length else s[: length - 1] + [EOT]
            out[i, : len(s)] = torch.tensor(s)
        return out

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Words up to the first EOT, joined by single spaces (the round trip normalises case and spacing)."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == EOT:
                break
            if i != PAD:
                out.append(self.itos[i])
        return " ".join(out)


class CBOW(nn.Module):
    """Mean of word embeddings over the non-pad tokens. Shape: (N, L) int64 -> (N, D)."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.feature_dim = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != PAD).unsqueeze(-1).float()
        return (self.embed(ids) * keep).sum(1) / keep.sum(1).clamp_min(1)


class TextTransformer(nn.Module):
    """Token + position embeddings, pre-norm Transformer layers, final LayerNorm, one pooled vector.

    Shape: (N, L) int64 with L <= ``context`` -> (N, width).
    """

    def __init__(self, vocab_size: int, context: int, width: int = 128, layers: int = 2, heads: int = 4,
                 pooling: str = "eot") -> None:
        super().__init__()
        if pooling not in ("eot", "cls"):
            raise UsageError(f"text pooling must be 'eot' or 'cls', not {pooling!r} (--method-arg pooling=eot)")
        self.pooling = pooling
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.empty(context + (pooling == "cls"), width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if pooling == "cls" else None
        # CLIP's initialisation: token std 0.02, positions std 0.01.
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.feature_dim = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token(ids)
        pad = ids == PAD
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
            pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], 1)
        x = x + self.position[: x.shape[1]]
        if self.pooling == "eot":
            # Causal: the EOT token summarises everything before it and nothing after (padding included).
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
            x = self.norm(self.blocks(x, mask=causal))
            return x[torch.arange(len(x), device=x.device), (ids == EOT).int().argmax(1)]
        x = self.norm(self.blocks(x, src_key_padding_mask=pad))
        return x[:, 0]


def build_text_encoder(kind: str, vocab_size: int, context: int, width: int, layers: int, heads: int,
                       pooling: str) -> nn.Module:
    if kind == "cbow":
        return CBOW(vocab_size, width)
    if kind == "transformer":
        return TextTransformer(vocab_size, context, width, layers, heads, pooling)
    raise UsageError(f"text encoder must be 'transformer' or 'cbow', not {kind!r} (--method-arg text_encoder=cbow)")
