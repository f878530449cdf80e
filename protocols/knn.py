"""k-nearest-neighbour classification on frozen features.

The weighted vote of InstDisc (Wu et al. 2018) and DINO's ``eval_knn.py``: L2-normalised features,
cosine similarity, the k nearest train samples vote for their class with weight exp(s / T); the
predicted class is the argmax of the summed votes. Also majority vote and euclidean neighbours.

One exact top-max(k) search per metric serves every k and vote rule. Test rows are processed in
chunks sized by memory, not by ``N_test // 100`` as DINO does (which crashes under 100 samples).
Top-5 ranks classes by their vote; a class with no vote is never "in the top 5" (when k < 5 DINO's
topk would count arbitrary zero-vote classes, dino issue #89), and ties go to the lower class index
at every rank, so top-1 equals ``argmax`` and majority vote matches scikit-learn's.
With k above the training set's size every training sample votes (recorded as ``k_used``). Every entry is
skipped when the search would exceed the memory budget (``limits``).

On the CPU the search is faiss-cpu's exact brute force (``faiss.knn``, no index copy of the bank), which
was at least as fast as torch's chunked matmul + topk on 60k x 784 (results/benchmarks/protocols.md) with
the same neighbours; GPUs keep the chunked torch search.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from protocols.base import Features, Metrics, topk_from_rank, true_class_rank, validated
from protocols.limits import Shape, over_budget, skip_all

DEFAULT_K = 20
DEFAULT_T = 0.07
# Similarity block per chunk: ~256 MB of float32 on the CPU (fits in cache-friendly pieces), 1 GB on a GPU.
CHUNK_BYTES = {"cpu": 1 << 28, "cuda": 1 << 30}


@torch.no_grad()
def search(train_x: torch.Tensor, test_x: torch.Tensor, k: int, metric: str = "cosine",
           device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest train rows of every test row, nearest first.

    Returns (score, index), both (N_test, k) on the CPU; score is the cosine similarity for
    ``cosine`` and minus the euclidean distance for ``euclidean`` (so larger is nearer for both).
    Shape: train_x (N, D), test_x (M, D) float.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown k-NN metric {metric!r}; use cosine or euclidean")
    device = torch.device(device)
    k = min(k, len(train_x))
    if device.type == "cpu":
        return faiss_search(train_x, test_x, k, metric)
    return torch_search(train_x, test_x, k, metric, device)


def faiss_search(train_x: torch.Tensor, test_x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``search`` by faiss-cpu on as many threads as torch uses (repbench's thread setting, not faiss's own)."""
    if len(test_x) == 0:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    as_array = np.array if metric == "cosine" else np.ascontiguousarray  # a copy only where normalised in place
    bank, queries = (as_array(a.detach().cpu().float().contiguous().numpy()) for a in (train_x, test_x))
    if metric == "cosine":
        # faiss's own normalisation (in place, zero rows left zero), so the neighbours are faiss's to the last bit.
        faiss.normalize_L2(bank)
        faiss.normalize_L2(queries)
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        score, index = faiss.knn(queries, bank, k, kind)
    finally:
        faiss.omp_set_num_threads(before)
    score, index = torch.from_numpy(score), torch.from_numpy(index)
    # faiss's L2 is the squared distance; larger must be nearer, as on the torch path.
    return (score if metric == "cosine" else score.clamp_min_(0).sqrt_().neg_()), index


@torch.no_grad()
def torch_search(train_x: torch.Tensor, test_x: torch.Tensor, k: int, metric: str,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``search`` by chunked matmul + topk on ``device`` (k already at most the bank's size)."""
    bank = train_x.to(device, torch.float32)
    if metric == "cosine":
        bank = F.normalize(bank, dim=1)
    else:
        bank_sq = bank.pow(2).sum(1)
    rows = chunk_rows(len(bank), bank.shape[1], device)
    scores, index = [], []
    for start in range(0, len(test_x), rows):
        q = test_x[start:start + rows].to(device, torch.float32)
        if metric == "cosine":
            s, i = (F.normalize(q, dim=1) @ bank.T).topk(k, dim=1)
        else:
            # ||q - t||^2 = ||q||^2 + ||t||^2 - 2 q.t; ||q||^2 is constant per row, so rank by 2 q.t - ||t||^2.
            s, i = (q @ bank.T).mul_(2).sub_(bank_sq).topk(k, dim=1)
            s = -(q.pow(2).sum(1, keepdim=True) - s).clamp_min_(0).sqrt_()
        scores.append(s.cpu())
        index.append(i.cpu())
    if not scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(index)


def chunk_rows(n: int, d: int, device: torch.device) -> int:
    """Test rows per chunk: their similarity block (rows, N) and normalised copy (rows, D) each within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES.get(device.type, 1 << 28) // (4 * max(1, n, d)))


def class_votes(score: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
                temperature: float = DEFAULT_T, vote: str = "weighted") -> torch.Tensor:
    """Summed votes of the k nearest neighbours.

    Shape: score (M, >=k) nearest first, labels (M, >=k) their classes -> (M, C).
    ``weighted`` uses exp(s / T) shifted by each row's best s (same ranking as DINO, no overflow
    when s is a negative distance); ``majority`` counts one vote per neighbour.
    """
    score, labels = score[:, :k], labels[:, :k]
    if vote == "weighted":
        weight = ((score - score[:, :1]) / temperature).exp()
    elif vote == "majority":
        weight = torch.ones_like(score)
    else:
        raise ValueError(f"unknown k-NN vote {vote!r}; use weighted or majority")
    return torch.zeros(len(score), num_classes, dtype=weight.dtype).scatter_add_(1, labels, weight)


def result_key(k: int, temperature: float, vote: str, metric: str) -> str:
    parts = ["knn"]
    if k != DEFAULT_K:
        parts.append(f"k{k}")
    if temperature != DEFAULT_T and vote == "weighted":
        parts.append(f"t{temperature:g}")
    if metric != "cosine":
        parts.append(metric)
    if vote != "weighted":
        parts.append(vote)
    return "_".join(parts)


# The variants reported by default: DINO's k values with the weighted cosine vote, plus the two classic
# alternatives at k=20 and k=200. All cosine entries share one search; euclidean adds one more.
DEFAULT_VARIANTS = (
    ("cosine", "weighted", (10, 20, 100, 200)),
    ("cosine", "majority", (20, 200)),
    ("euclidean", "majority", (20,)),
)


def _keys(variants, temperatures) -> list[str]:
    return [result_key(k, t or DEFAULT_T, vote, metric) for metric, vote, ks in variants for k in ks
            for t in (temperatures if vote == "weighted" else (None,))]


def limits(shape: Shape, *, variants=DEFAULT_VARIANTS, temperatures=(DEFAULT_T,)) -> dict[str, str]:
    """Memory only (any k runs, see ``k_used``). Bytes: the normalised bank, one chunk's similarity block and
    query copy (twice: block and top-k workspace), the neighbours' scores, indices and labels for every test row
    (two searches' worth), and the class votes and ranks."""
    keys = _keys(variants, temperatures)
    if shape.dim is None:
        return dict.fromkeys(keys, "")
    n, m, d, c = shape.n_train, shape.n_test, shape.dim, shape.num_classes
    k = min(n, max(k for _, _, ks in variants for k in ks))
    rows = min(m, chunk_rows(n, d, torch.device(shape.device)))
    need = 4 * n * d + 8 * rows * (n + d) + 64 * m * k + 12 * m * c
    formula = f"4ND + 8r(N+D) + 64Mk + 12MC with N={n}, M={m}, D={d}, C={c}, k={k}, r={rows} rows per chunk"
    return dict.fromkeys(keys, over_budget(need, formula, shape.device))


@validated
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             variants=DEFAULT_VARIANTS, temperatures=(DEFAULT_T,)) -> Metrics:
    """Every (metric, vote, k, T) of ``variants`` x ``temperatures``, each under its own key.

    ``variants``: tuples (metric, vote, ks). The default k=20, T=0.07 cosine weighted entry is ``knn``;
    others are named like ``knn_k200``, ``knn_k20_t0.1``, ``knn_majority``, ``knn_euclidean_majority``.
    ``seed`` is recorded only: the protocol is deterministic.
    """
    reasons = limits(Shape.of(train, test, device), variants=variants, temperatures=temperatures)
    if any(reasons.values()):
        return skip_all(reasons)
    num_classes = max(train.num_classes, test.num_classes)
    out: Metrics = {}
    by_metric: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for metric, vote, ks in variants:
        by_metric.setdefault(metric, []).append((vote, tuple(ks)))
    for metric, entries in by_metric.items():
        k_max = max(k for _, ks in entries for k in ks)
        score, index = search(train.x, test.x, k_max, metric, device)
        nb_labels = train.y.cpu()[index]
        for vote, ks in entries:
            for k in ks:
                for t in (temperatures if vote == "weighted" else (None,)):
                    votes = class_votes(score, nb_labels, num_classes, k, t or DEFAULT_T, vote)
                    top1, top5 = topk_from_rank(true_class_rank(votes, test.y.cpu(), votes=True), num_classes)
                    out[result_key(k, t or DEFAULT_T, vote, metric)] = {
                        "k": k, "k_used": min(k, len(train)), "temperature": t, "metric": metric, "vote": vote,
                        "normalised": metric == "cosine", "top1": top1, "top5": top5,
                        "n_train": len(train), "n_test": len(test), "num_classes": num_classes, "seed": seed,
                    }
    return out
