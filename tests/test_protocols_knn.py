"""k-NN: against a float64 brute force, scikit-learn's majority vote, and the top-5 / small-data edge cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from protocols import PROTOCOLS
from protocols.base import Features, true_class_rank
from protocols.knn import class_votes, search


def blobs(n, d=16, c=6, seed=0, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * spread
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def reference_knn(train_x, train_y, test_x, k, t, c, metric="cosine", vote="weighted"):
    """DINO's weighted vote written out in float64, one test row at a time."""
    tr, te = train_x.double(), test_x.double()
    if metric == "cosine":
        tr, te = tr / tr.norm(dim=1, keepdim=True), te / te.norm(dim=1, keepdim=True)
    votes = torch.zeros(len(te), c, dtype=torch.float64)
    for i, q in enumerate(te):
        score = tr @ q if metric == "cosine" else -(tr - q).norm(dim=1)
        top = score.argsort(descending=True)[:k]
        w = (score[top] / t).exp() if vote == "weighted" else torch.ones(len(top), dtype=torch.float64)
        votes[i].index_add_(0, train_y[top], w)
    return votes


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_search_and_votes_match_float64_brute_force(metric, k):
    x, y = blobs(700)
    tr_x, tr_y, te_x = x[:500], y[:500], x[500:]
    score, index = search(tr_x, te_x, k, metric)
    ref = reference_knn(tr_x, tr_y, te_x, k, 0.07, 6, metric)
    votes = class_votes(score, tr_y[index], 6, k, 0.07)
    assert torch.equal(votes.argmax(1), ref.argmax(1))
    # Same neighbours (as sets) as the float64 search, and scores equal to float32 precision.
    ref_scores = (torch.nn.functional.normalize(te_x.double(), dim=1) @ torch.nn.functional.normalize(
        tr_x.double(), dim=1).T) if metric == "cosine" else -torch.cdist(te_x.double(), tr_x.double())
    ref_top = ref_scores.topk(k, dim=1)
    assert torch.allclose(score.double(), ref_top.values, atol=1e-4)
    assert (index.sort(1).values == ref_top.indices.sort(1).values).float().mean() > 0.999


def test_protocol_top1_top5_match_reference():
    x, y = blobs(900, seed=1, spread=0.6)
    train, test = Features(x[:600], y[:600]), Features(x[600:], y[600:])
    out = PROTOCOLS.get("knn")(train, test)
    ref = reference_knn(x[:600], y[:600], x[600:], 20, 0.07, 6)
    ranks = true_class_rank(ref.float(), y[600:], votes=True)
    assert out["knn"]["top1"] == pytest.approx((ranks == 0).float().mean().item())
    assert out["knn"]["top5"] == pytest.approx((ranks < 5).float().mean().item())
    assert out["knn"]["k"] == 20 and out["knn"]["temperature"] == 0.07
    assert 0.3 < out["knn"]["top1"] < 1.0  # the blobs overlap: a test that could fail both ways


def test_majority_vote_matches_sklearn():
    x, y = blobs(800, seed=2, spread=0.5)
    out = PROTOCOLS.get("knn")(Features(x[:600], y[:600]), Features(x[600:], y[600:]),
                               variants=(("euclidean", "majority", (7, 20)),))
    for k in (7, 20):
        sk = KNeighborsClassifier(k, algorithm="brute").fit(x[:600].numpy(), y[:600].numpy())
        key = "knn_euclidean_majority" if k == 20 else f"knn_k{k}_euclidean_majority"
        assert out[key]["top1"] == pytest.approx(sk.score(x[600:].numpy(), y[600:].numpy()))


def test_default_keys_and_settings_recorded():
    x, y = blobs(300)
    out = PROTOCOLS.get("knn")(Features(x[:200], y[:200]), Features(x[200:], y[200:]), seed=3)
    assert {"knn", "knn_k10", "knn_k100", "knn_k200", "knn_majority", "knn_k200_majority",
            "knn_euclidean_majority"} <= set(out)
    for entry in out.values():
        assert {"k", "temperature", "metric", "vote", "top1", "top5", "n_train", "n_test", "seed"} <= set(entry)
        assert entry["seed"] == 3 and 0 <= entry["top1"] <= 1


def test_top5_counts_only_classes_with_votes():
    # k=1: one class gets a vote; DINO's topk would count four arbitrary zero-vote classes as "top 5".
    votes = class_votes(torch.tensor([[0.9]]), torch.tensor([[3]]), 10, 1)
    assert true_class_rank(votes, torch.tensor([3]), votes=True).item() == 0
    assert true_class_rank(votes, torch.tensor([0]), votes=True).item() == 10  # no vote: never in the top 5


def test_ties_go_to_the_lower_class():
    votes = torch.tensor([[2.0, 5.0, 5.0, 1.0, 0.0, 0.0]])
    assert true_class_rank(votes, torch.tensor([1]), votes=True).item() == 0
    assert true_class_rank(votes, torch.tensor([2]), votes=True).item() == 1
    assert true_class_rank(votes, torch.tensor([0]), votes=True).item() == 2


def test_tiny_data_few_classes_and_k_above_train_size():
    x, y = blobs(40, c=3, seed=4)
    out = PROTOCOLS.get("knn")(Features(x[:12], y[:12]), Features(x[12:], y[12:]))
    assert math.isnan(out["knn"]["top5"])  # fewer than 5 classes
    assert out["knn_k200"]["k_used"] == 12
    assert 0 <= out["knn_k200"]["top1"] <= 1


def test_single_test_sample():
    x, y = blobs(101, seed=5)
    out = PROTOCOLS.get("knn")(Features(x[:100], y[:100]), Features(x[100:], y[100:]))
    assert out["knn"]["top1"] in (0.0, 1.0) and out["knn"]["n_test"] == 1


def test_chunking_does_not_change_the_result(monkeypatch):
    import protocols.knn as knn

    # The chunked torch search (the GPU path; the CPU calls faiss) run on the CPU: one chunk, then 7 rows each.
    x, y = blobs(600, seed=6)
    cpu = torch.device("cpu")
    whole = knn.torch_search(x[:400], x[400:], 10, "cosine", cpu)
    monkeypatch.setitem(knn.CHUNK_BYTES, "cpu", 4 * 400 * 7)
    chunked = knn.torch_search(x[:400], x[400:], 10, "cosine", cpu)
    assert knn.chunk_rows(400, x.shape[1], cpu) == 7
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])


def test_digits_accuracy_is_sane():
    from bench.data import load_dataset

    ds = load_dataset("digits")
    flat = lambda t: t.reshape(len(t), -1).float()
    out = PROTOCOLS.get("knn")(Features(flat(ds.train_x), ds.train_y), Features(flat(ds.test_x), ds.test_y))
    sk = KNeighborsClassifier(20, algorithm="brute").fit(flat(ds.train_x).numpy(), ds.train_y.numpy())
    assert out["knn_euclidean_majority"]["top1"] == pytest.approx(sk.score(flat(ds.test_x).numpy(), ds.test_y.numpy()))
    assert out["knn"]["top1"] > 0.95
    assert np.isfinite(out["knn"]["top5"])
