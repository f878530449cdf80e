"""K-Means clustering of frozen features, scored against the labels (Coates & Ng 2011, DEC, IIC, SCAN).

K = number of classes, features L2-normalised, greedy k-means++ seeding and Lloyd iterations as
scikit-learn's KMeans (same stopping rule: centre shift below ``tol`` x mean feature variance, or
assignments unchanged), ``n_init`` restarts run together as one batched matrix product, the lowest
inertia kept. Fit on train, assign test, score test: NMI (arithmetic), ARI, and clustering accuracy
under the best one-to-one cluster->class map (Hungarian, scipy). Mean and std over ``n_seeds`` seeds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from protocols.base import PROTOCOLS, Features, Metrics
from protocols.features import resolve_device


def cluster_accuracy(y_true, y_pred) -> float:
    """Accuracy under the best one-to-one map of clusters to classes (Hungarian on the contingency table).

    Clusters left without a class (more clusters than classes) count as errors.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return math.nan
    table = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y_true))


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances of every point to every centre of every restart.

    Shape: x (N, D), x_sq (N,), centers (R, K, D) -> (N, R, K).
    """
    r, k, d = centers.shape
    c_sq = centers.pow(2).sum(-1).reshape(1, r * k)
    dots = x @ centers.reshape(r * k, d).T
    return (x_sq[:, None] + c_sq - 2 * dots).clamp_min_(0).view(-1, r, k)


def kmeans_plusplus(x: torch.Tensor, x_sq: torch.Tensor, k: int, restarts: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's 2 + log K local trials), per restart.

    Shape: x (N, D) -> centres (R, K, D).
    """
    n, d = x.shape
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (restarts,), generator=generator, device="cpu").to(x.device)
    centers = torch.empty(restarts, k, d, dtype=x.dtype, device=x.device)
    centers[:, 0] = x[first]
    closest = _sq_dist(x, x_sq, centers[:, :1])[..., 0]  # (N, R)
    for j in range(1, k):
        pot = closest.sum(0)  # (R,)
        # Sample candidates with probability proportional to the current squared distance.
        u = torch.rand(restarts, trials, generator=generator, device="cpu").to(x.device) * pot[:, None]
        cum = closest.T.cumsum(1)  # (R, N)
        cand = torch.searchsorted(cum, u).clamp_max_(n - 1)  # (R, T)
        cand_d = _sq_dist(x, x_sq, x[cand])  # (N, R, T)
        new_closest = torch.minimum(closest[:, :, None], cand_d)
        best = new_closest.sum(0).argmin(1)  # (R,)
        centers[:, j] = x[cand[torch.arange(restarts, device=x.device), best]]
        closest = new_closest[:, torch.arange(restarts, device=x.device), best]
    return centers


def lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int = 300, tol: float = 1e-4
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Lloyd iterations for R restarts at once; each restart stops on its own (scikit-learn's rule).

    Shape: x (N, D), centers (R, K, D) -> (centers (R, K, D), labels (N, R), inertia (R,), iterations).
    """
    n, d = x.shape
    r, k, _ = centers.shape
    x_sq = x.pow(2).sum(1)
    shift_tol = tol * x.var(0).mean() if n > 1 else torch.zeros((), device=x.device)
    active = torch.ones(r, dtype=torch.bool, device=x.device)
    dist = _sq_dist(x, x_sq, centers)
    labels = dist.argmin(-1)
    offset = (torch.arange(r, device=x.device) * k)[None, :]
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # Sums per (restart, cluster) as one product with the one-hot assignment (N, R*K).
        onehot = torch.zeros(n, r * k, dtype=x.dtype, device=x.device).scatter_(1, labels + offset, 1.0)
        counts = onehot.sum(0).view(r, k)
        new = (onehot.T @ x).view(r, k, d) / counts.clamp_min(1)[..., None]
        new = torch.where((counts > 0)[..., None], new, centers)
        if (counts == 0).any():
            _relocate_empty(x, new, counts, dist, labels)
        new = torch.where(active[:, None, None], new, centers)
        shift = (new - centers).pow(2).sum((1, 2))
        centers = new
        dist = _sq_dist(x, x_sq, centers)
        new_labels = dist.argmin(-1)
        unchanged = (new_labels == labels).all(0)
        labels = torch.where(active[None, :], new_labels, labels)
        active &= ~(unchanged | (shift <= shift_tol))
        if not active.any():
            break
    inertia = dist.gather(2, labels[..., None])[..., 0].sum(0)
    return centers, labels, inertia, iterations


def _relocate_empty(x, centers, counts, dist, labels) -> None:
    """An empty cluster takes the point farthest from its centre (as scikit-learn), in place."""
    empty = (counts == 0).nonzero().tolist()
    for r, j in empty:
        far = dist[torch.arange(len(x)), r, labels[:, r]].argmax()
        centers[r, j] = x[far]


def fit_predict(train_x: torch.Tensor, test_x: torch.Tensor, k: int, n_init: int = 10, seed: int = 0,
                max_iter: int = 300, tol: float = 1e-4, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Fit K-Means on ``train_x`` (best of ``n_init`` restarts by inertia), assign both splits.

    Shape: train_x (N, D), test_x (M, D) -> (train labels (N,), test labels (M,), info).
    """
    g = torch.Generator().manual_seed(seed)
    x = train_x.to(device, torch.float32)
    k = min(k, len(x))
    init = kmeans_plusplus(x, x.pow(2).sum(1), k, n_init, g)
    centers, labels, inertia, iters = lloyd(x, init, max_iter, tol)
    best = int(inertia.argmin())
    c = centers[best:best + 1]
    t = test_x.to(device, torch.float32)
    test_labels = _sq_dist(t, t.pow(2).sum(1), c)[:, 0].argmin(-1) if len(t) else torch.empty(0, dtype=torch.long)
    return labels[:, best].cpu(), test_labels.cpu(), {"inertia": float(inertia[best]), "iterations": iters}


@PROTOCOLS.register("kmeans")
def evaluate(train: Features, test: Features, *, n_init: int = 10, n_seeds: int = 3, seed: int = 0,
             max_iter: int = 300, tol: float = 1e-4, normalise: bool = True, device: str | None = None,
             **_ignored) -> Metrics:
    """``kmeans``: NMI, ARI and Hungarian accuracy on test (mean, and std over seeds seed..seed+n_seeds-1)."""
    dev = resolve_device(train, device)
    num_classes = max(train.num_classes, test.num_classes)
    tx, sx = train.x.float(), test.x.float()
    if normalise:
        tx, sx = F.normalize(tx, dim=1), F.normalize(sx, dim=1)
    y = test.y.cpu().numpy()
    scores: dict[str, list[float]] = {"nmi": [], "ari": [], "acc": []}
    iterations = []
    seeds = list(range(seed, seed + n_seeds))
    for s in seeds:
        _, pred, info = fit_predict(tx, sx, num_classes, n_init, s, max_iter, tol, dev)
        pred = pred.numpy()
        scores["nmi"].append(float(normalized_mutual_info_score(y, pred)))
        scores["ari"].append(float(adjusted_rand_score(y, pred)))
        scores["acc"].append(cluster_accuracy(y, pred))
        iterations.append(info["iterations"])
    entry = {"k": num_classes, "n_init": n_init, "init": "k-means++", "normalised": normalise, "fit_split": "train",
             "scored_split": "test", "max_iter": max_iter, "tol": tol, "seeds": seeds, "seed": seed,
             "n_train": len(train), "n_test": len(test), "iterations": iterations}
    for name, vals in scores.items():
        entry[name] = float(np.mean(vals))
        entry[f"{name}_std"] = float(np.std(vals))
    return {"kmeans": entry}
