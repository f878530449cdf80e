"""Evaluation protocols on frozen features: features in, metrics dict out. ``PROTOCOLS`` is the table of what is
registered; an entry is imported when first asked for."""

from bench.core.registry import Registry

PROTOCOLS = Registry("protocol", {
    "fewshot": "protocols.fewshot:evaluate",
    "kmeans": "protocols.kmeans:evaluate",
    "knn": "protocols.knn:evaluate",
    "linear": "protocols.linear:evaluate",
    "zero-shot": "protocols.zero_shot:evaluate",
})
