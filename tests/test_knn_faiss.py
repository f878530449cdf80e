"""The CPU k-NN search is faiss-cpu's: same top-k as faiss called with its own defaults, and as the torch path GPUs use."""

import faiss
import numpy as np
import pytest
import torch

import protocols.knn as knn
from protocols import PROTOCOLS
from protocols.base import Features, true_class_rank


def random_data(n=3000, m=400, d=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g), torch.randint(0, 7, (n,), generator=g)


def faiss_defaults(train_x, test_x, k, metric):
    """faiss's own recipe: normalize_L2 + IndexFlatIP for cosine, IndexFlatL2 (squared distances) for euclidean."""
    bank, queries = train_x.numpy().copy(), test_x.numpy().copy()
    if metric == "cosine":
        faiss.normalize_L2(bank)
        faiss.normalize_L2(queries)
    index = (faiss.IndexFlatIP if metric == "cosine" else faiss.IndexFlatL2)(bank.shape[1])
    index.add(bank)
    score, ids = index.search(queries, k)
    return (score if metric == "cosine" else -np.sqrt(np.maximum(score, 0))), ids


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 20, 200])
def test_cpu_search_equals_faiss_topk(metric, k):
    train_x, test_x, _ = random_data(seed=k)
    score, index = knn.search(train_x, test_x, k, metric)
    ref_score, ref_index = faiss_defaults(train_x, test_x, k, metric)
    assert index.shape == (400, k) and index.dtype == torch.long
    assert np.array_equal(index.numpy(), ref_index)
    np.testing.assert_allclose(score.numpy(), ref_score, rtol=0, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_torch_path_equals_faiss_path(metric):
    train_x, test_x, _ = random_data(seed=7)
    score, index = knn.search(train_x, test_x, 50, metric)
    t_score, t_index = knn.torch_search(train_x, test_x, 50, metric, torch.device("cpu"))
    assert torch.equal(index, t_index)  # random data: no near ties, so float rounding cannot reorder neighbours
    assert torch.allclose(score, t_score, atol=1e-4)


def test_protocol_top1_equals_faiss_weighted_vote():
    train_x, test_x, y = random_data(seed=3)
    y_test = torch.randint(0, 7, (400,), generator=torch.Generator().manual_seed(4))
    train_x += 2 * torch.nn.functional.one_hot(y, 48).float()  # some signal, so top-1 is not a coin toss
    test_x += 2 * torch.nn.functional.one_hot(y_test, 48).float()
    out = PROTOCOLS.get("knn")(Features(train_x, y), Features(test_x, y_test))
    score, ids = faiss_defaults(train_x, test_x, 20, "cosine")
    votes = knn.class_votes(torch.from_numpy(score), y[torch.from_numpy(ids)], 7, 20)
    top1 = (true_class_rank(votes, y_test, votes=True) == 0).float().mean().item()
    assert out["knn"]["top1"] == pytest.approx(top1) and 0.5 < top1 < 1


def test_threads_follow_torch_and_faiss_setting_is_restored(monkeypatch):
    seen = []
    real = faiss.knn
    monkeypatch.setattr(faiss, "knn", lambda *a: seen.append(faiss.omp_get_max_threads()) or real(*a))
    before, torch_threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        knn.search(*random_data(n=100, m=10)[:2], 5)
    finally:
        torch.set_num_threads(torch_threads)
    assert seen == [1] and faiss.omp_get_max_threads() == before


def test_empty_test_set_and_k_above_bank():
    train_x, test_x, _ = random_data(n=30, m=5)
    score, index = knn.search(train_x, test_x[:0], 10)
    assert score.shape == index.shape == (0, 10)
    score, index = knn.search(train_x, test_x, 100, "euclidean")
    assert index.shape == (5, 30) and torch.equal(index.sort(1).values, torch.arange(30).expand(5, 30))
