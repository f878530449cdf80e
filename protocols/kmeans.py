"""K-Means clustering of frozen features, scored against the labels (Coates & Ng 2011, DEC, IIC, SCAN).

K = number of classes, features L2-normalised, ``n_init`` restarts of scikit-learn's algorithm
(protocols/solvers/kmeans.py), the lowest inertia kept. Fit on train, assign test, score test: NMI
(arithmetic), ARI, and clustering accuracy under the best one-to-one cluster->class map (Hungarian, scipy).
Mean and std over ``n_seeds`` seeds. With fewer training samples than classes, K is the number of samples.
Skipped when the restarts would exceed the memory budget (``limits``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from protocols.base import Features, Metrics, threads_by_size, validated
from protocols.limits import Shape, over_budget, skipped
from protocols.solvers.kmeans import fit_predict


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


def limits(shape: Shape, *, n_init: int = 10, n_seeds: int = 3) -> dict[str, str]:
    """Memory only. Bytes, for R = n_init x n_seeds restarts of K = min(C, N) centres with T = 2 + ln K seeding
    trials: the features (float32 and normalised copies), the centres and their float64 sums, the seeding candidates, and
    per point and restart the distances to every centre and candidate, the one-hot assignment and the bounds."""
    if shape.dim is None:
        return {"kmeans": ""}
    n, m, d = shape.n_train, shape.n_test, shape.dim
    k, r = min(shape.num_classes, n), n_init * n_seeds
    t = 2 + int(math.log(k))
    # x 5/4: the allocator's and the solver's small temporaries, which the terms leave out; measured peaks on a
    # 1500 x 256 problem reached 1.02 of the terms alone (tests/test_faults_protocols.py).
    need = 5 * (12 * (n + m) * d + r * d * (48 * k + 8 * t) + n * r * (32 * k + 12 * t + 32)) // 4
    formula = f"5/4 x (12(N+M)D + RD(48K+8T) + NR(32K+12T+32)) with N={n}, M={m}, D={d}, K={k}, R={r}, T={t}"
    return {"kmeans": over_budget(need, formula, shape.device)}


@validated
@threads_by_size(lambda train, test: train.x.numel())
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu", n_init: int = 10,
             n_seeds: int = 3, max_iter: int = 300, tol: float = 1e-4, normalise: bool = True) -> Metrics:
    """``kmeans``: NMI, ARI and Hungarian accuracy on test (mean, and std over seeds seed..seed+n_seeds-1)."""
    reason = limits(Shape.of(train, test, device), n_init=n_init, n_seeds=n_seeds)["kmeans"]
    if reason:
        return {"kmeans": skipped(reason)}
    num_classes = max(train.num_classes, test.num_classes)
    tx, sx = train.x.float(), test.x.float()
    if normalise:
        tx, sx = F.normalize(tx, dim=1), F.normalize(sx, dim=1)
    y = test.y.cpu().numpy()
    scores: dict[str, list[float]] = {"nmi": [], "ari": [], "acc": []}
    iterations = []
    seeds = list(range(seed, seed + n_seeds))
    for _, pred, info in fit_predict(tx, sx, num_classes, n_init, seeds, max_iter, tol, device):
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
