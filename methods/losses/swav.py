"""Swapped prediction of online cluster assignments (SwAV). Shape letters: N batch, V views, K prototypes, Q queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["sinkhorn_knopp", "swav_loss"]

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   reduce_sum: Reduce = _same, reduce_max: Reduce = _same) -> torch.Tensor:
    """Soft codes with equally used prototypes (Caron et al. 2020, eq. 3-5; Cuturi 2013).

    Alternately rescales ``exp(scores / epsilon)`` so that every prototype takes 1/K of the mass
    and every sample 1/N, ``iterations`` times, then returns rows that sum to one. The maximum
    score is subtracted first (a constant factor that the normalisation removes) so exp cannot overflow.

    Samples spread over processes: ``reduce_sum`` / ``reduce_max`` combine a tensor over them (all-reduces, as
    the official ``distributed_sinkhorn``), so each process gets its rows' codes of the Sinkhorn of all rows.
    The defaults, the identity, are the one-process case.

    Shape: scores (N, K) -> codes (N, K), no gradient.
    """
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    q = torch.exp((scores - reduce_max(scores.max())) / epsilon).T  # (K, N)
    q /= reduce_sum(q.sum())
    k = q.shape[0]
    n = reduce_sum(q.new_tensor(float(q.shape[1])))
    for _ in range(iterations):
        q /= reduce_sum(q.sum(dim=1, keepdim=True)) * k
        q /= q.sum(dim=0, keepdim=True) * n
    return (q * n).T


def swav_loss(scores: Sequence[torch.Tensor], temperature: float = 0.1, epsilon: float = 0.05,
              iterations: int = 3, assign_views: Sequence[int] = (0, 1),
              queue_scores: Sequence[torch.Tensor] | None = None, reduce_sum: Reduce = _same,
              reduce_max: Reduce = _same) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1-2 and the official ``main_swav.py``).

    For each view a in ``assign_views`` (the global crops), codes ``q_a = sinkhorn_knopp(scores_a)``
    (optionally over ``[queue_scores[a]; scores_a]``, keeping the batch's rows) are predicted from
    every other view v: ``-sum_k q_a log softmax(scores_v / temperature)``, mean over samples,
    averaged over the V - 1 predicting views and then over the assigned views.

    ``reduce_sum`` / ``reduce_max`` go to ``sinkhorn_knopp``: with them the codes are those of every process's
    rows (and queue rows) together, while the cross-entropy stays the mean over this process's N rows.

    Shape: scores V tensors (N, K) of z.c (normalised z and prototypes c); queue_scores one (Q, K)
    per assigned view, or None -> scalar.
    """
    if len(scores) < 2:
        raise ValueError("swav_loss needs at least two views (one to assign codes, one to predict them)")
    n = scores[0].shape[0]
    total = 0.0
    for qi, a in enumerate(assign_views):
        s = scores[a].detach()
        if queue_scores is not None:
            s = torch.cat([queue_scores[qi].to(s.dtype), s])
        codes = sinkhorn_knopp(s, epsilon, iterations, reduce_sum, reduce_max)[-n:]
        others = [v for v in range(len(scores)) if v != a]
        total = total + sum(F.cross_entropy(scores[v].to(codes.dtype) / temperature, codes) for v in others) / len(others)
    return total / len(assign_views)
