"""Evaluation protocols on frozen features: features in, metrics dict out. ``PROTOCOLS`` is the table of what is
registered; an entry is imported when first asked for. ``LIMITS`` holds, under the same names, what each protocol
cannot produce on data of a given shape (protocols/base.py's docstring), for checks made before any work."""

from bench.core.registry import Registry

PROTOCOLS = Registry("protocol", {
    "fewshot": "protocols.fewshot:evaluate",
    "kmeans": "protocols.kmeans:evaluate",
    "knn": "protocols.knn:evaluate",
    "linear": "protocols.linear:evaluate",
    "zero-shot": "protocols.zero_shot:evaluate",
})

LIMITS = Registry("protocol", {
    "fewshot": "protocols.fewshot:limits",
    "kmeans": "protocols.kmeans:limits",
    "knn": "protocols.knn:limits",
    "linear": "protocols.linear:limits",
    "zero-shot": "protocols.zero_shot:limits",
})
