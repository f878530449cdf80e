"""K-Means: Lloyd against scikit-learn from the same start, Hungarian accuracy against brute force, the protocol's metrics."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from protocols import PROTOCOLS
from protocols.base import Features
from protocols.kmeans import cluster_accuracy
from protocols.solvers.kmeans import fit_predict, kmeans_plusplus, lloyd


def brute_force_accuracy(y_true, y_pred):
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    # Every injective map between clusters and classes (the smaller set into the larger).
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image, strict=True))
            best = max(best, sum(mapping[p] == t for p, t in zip(y_pred, y_true, strict=True)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes, strict=True))
            best = max(best, sum(mapping.get(p) == t for p, t in zip(y_pred, y_true, strict=True)))
    return best / len(y_true)


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_classes, n_clusters = rng.integers(2, 6), rng.integers(2, 6)
    y_true = rng.integers(0, n_classes, 40)
    y_pred = rng.integers(0, n_clusters, 40)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred))


def test_hungarian_is_label_permutation_invariant():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    assert cluster_accuracy(y, (y + 1) % 3) == 1.0
    assert cluster_accuracy(y, np.zeros_like(y)) == pytest.approx(3 / 7)


def digits_features():
    from bench.data import load_dataset

    ds = load_dataset("digits")
    norm = lambda t: torch.nn.functional.normalize(t.reshape(len(t), -1).float(), dim=1)
    return norm(ds.train_x), ds.train_y, norm(ds.test_x), ds.test_y


def test_lloyd_matches_sklearn_from_the_same_start():
    x, _, _, _ = digits_features()
    init = kmeans_plusplus(x, x.pow(2).sum(1), 10, 3, [torch.Generator().manual_seed(0)])
    centers, labels, inertia, _ = lloyd(x, init)
    for r in range(3):
        sk = KMeans(10, init=init[r].double().numpy(), n_init=1, algorithm="lloyd").fit(x.double().numpy())
        assert (labels[:, r].numpy() == sk.labels_).mean() > 0.995
        assert inertia[r].item() == pytest.approx(sk.inertia_, rel=1e-4)


def test_restarts_reach_sklearn_quality():
    x, _, _, _ = digits_features()
    ours = [info["inertia"] for _, _, info in fit_predict(x, x[:1], 10, n_init=10, seeds=range(3))]
    sk = [KMeans(10, n_init=10, random_state=s).fit(x.numpy()).inertia_ for s in range(3)]
    assert np.mean(ours) <= np.mean(sk) * 1.005


def test_protocol_metrics_are_sklearn_metrics_of_its_assignment():
    tr_x, tr_y, te_x, te_y = digits_features()
    out = PROTOCOLS.get("kmeans")(Features(tr_x, tr_y), Features(te_x, te_y), n_seeds=2, seed=5)["kmeans"]
    preds = [test.numpy() for _, test, _ in fit_predict(tr_x, te_x, 10, 10, (5, 6))]
    assert out["nmi"] == pytest.approx(np.mean([normalized_mutual_info_score(te_y, p) for p in preds]))
    assert out["ari"] == pytest.approx(np.mean([adjusted_rand_score(te_y, p) for p in preds]))
    assert out["acc"] == pytest.approx(np.mean([cluster_accuracy(te_y.numpy(), p) for p in preds]))
    assert out["nmi_std"] == pytest.approx(np.std([normalized_mutual_info_score(te_y, p) for p in preds]))
    assert out["seeds"] == [5, 6] and out["k"] == 10 and out["n_init"] == 10
    assert out["nmi"] > 0.6  # digits cluster well: a broken assignment would land near 0


def test_seeds_batched_equal_seeds_alone():
    x, _, _, _ = digits_features()
    together = fit_predict(x, x[:50], 10, n_init=3, seeds=(1, 2))
    for s, (train_labels, _, info) in zip((1, 2), together, strict=True):
        alone = fit_predict(x, x[:50], 10, n_init=3, seeds=(s,))[0]
        assert torch.equal(alone[0], train_labels) and alone[2]["inertia"] == pytest.approx(info["inertia"])


def test_empty_cluster_is_relocated():
    # Two far-apart pairs and two centres nobody is nearest to: they must move onto distinct data points.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0], [10.0, 10.1]])
    init = torch.tensor([[[0.0, 0.05], [10.0, 10.05], [100.0, 100.0], [-100.0, 100.0]]])
    centers, labels, inertia, _ = lloyd(x, init)
    assert len(set(labels[:, 0].tolist())) == 4
    assert (centers[0].abs() < 20).all() and inertia.item() < 0.02


def test_tiny_data_and_fewer_samples_than_classes():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g), torch.arange(30) % 3
    out = PROTOCOLS.get("kmeans")(Features(x[:3], y[:3]), Features(x[3:], y[3:]))["kmeans"]
    assert all(math.isfinite(out[m]) for m in ("nmi", "ari", "acc"))
    out = PROTOCOLS.get("kmeans")(Features(x[:2], y[:2], 3), Features(x[2:], y[2:]))["kmeans"]
    assert math.isfinite(out["acc"])
