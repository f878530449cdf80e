"""One contestant of benchmarks/test_protocols_bench.py, run in its own process with a clean environment.

``python benchmarks/protocol_contestants.py NAME DATA_DIR`` prints one JSON line whose ``seconds`` is the call
alone (in-process); the parent times the whole process (interpreter start, imports, loading DATA_DIR/*.npy, the
call, the output). Every contestant gets the same arrays (Fashion-MNIST float32 pixels in [0, 1], int64 labels)
and no thread or OpenMP setting of ours: each library runs under its own defaults. Each call ends at the output
the protocol reports (kNN top-1, linear top-1, K-Means labels for NMI), normalisation included where needed.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

K, T, CLASSES = 20, 0.07, 10
SEEDS = range(5)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def weighted_top1(score: np.ndarray, labels: np.ndarray, yt: np.ndarray) -> float:
    """DINO's weighted vote, exp((s - s_best) / T) as protocols.knn.class_votes; argmax ties go to the lower class."""
    weight = np.exp((score - score[:, :1]) / np.float32(T))
    votes = np.zeros((len(score), CLASSES), np.float32)
    np.add.at(votes, (np.arange(len(score))[:, None], labels), weight)
    return float((votes.argmax(1) == yt).mean())


def faiss_knn(x, y, xt, yt):
    import faiss

    def call():
        faiss.normalize_L2(x)
        faiss.normalize_L2(xt)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        score, ids = index.search(xt, K)
        return weighted_top1(score, y[ids], yt)

    top1, seconds = timed(call)
    return {"seconds": seconds, "top1": top1, "threads": f"faiss OpenMP {faiss.omp_get_max_threads()}"}


def sklearn_linear(x, y, xt, yt):
    from sklearn.linear_model import LogisticRegression

    top1, seconds = timed(lambda: float(LogisticRegression(C=1.0, max_iter=200).fit(x, y).score(xt, yt)))
    return {"seconds": seconds, "top1": top1, "threads": blas_threads()}


def faiss_kmeans(x, y, xt, yt):
    import faiss

    def call():
        faiss.normalize_L2(xt)
        labels = []
        for s in SEEDS:
            km = faiss.Kmeans(xt.shape[1], CLASSES, seed=1234 + s)
            km.train(xt)
            labels.append(km.index.search(xt, 1)[1][:, 0].tolist())
        return labels

    labels, seconds = timed(call)
    return {"seconds": seconds, "labels": labels, "threads": f"faiss OpenMP {faiss.omp_get_max_threads()}"}


def sklearn_kmeans(x, y, xt, yt):
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    def call():
        xn = normalize(xt)
        return [KMeans(CLASSES, n_init=1, random_state=s).fit(xn).labels_.tolist() for s in SEEDS]

    labels, seconds = timed(call)
    return {"seconds": seconds, "labels": labels, "threads": blas_threads()}


def blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info())


def repbench(protocol: str, **options):
    def run(x, y, xt, yt):
        import torch

        from protocols import PROTOCOLS
        from protocols.base import Features

        train = Features(torch.from_numpy(x), torch.from_numpy(y))
        test = Features(torch.from_numpy(xt), torch.from_numpy(yt))
        call = PROTOCOLS.get(protocol)  # imports the protocol's module (and faiss): part of the process, not the call
        out, seconds = timed(lambda: call(train, test, **options))
        return {"seconds": seconds, "top1": out[protocol]["top1"], "threads": f"torch {torch.get_num_threads()}"}

    return run


def repbench_kmeans(x, y, xt, yt):
    import torch

    from protocols.solvers.kmeans import fit_predict

    def call():
        xn = torch.nn.functional.normalize(torch.from_numpy(xt), dim=1)
        return [fit_predict(xn, xn, CLASSES, n_init=1, seeds=(s,))[0][0].tolist() for s in SEEDS]

    labels, seconds = timed(call)
    return {"seconds": seconds, "labels": labels, "threads": f"torch {torch.get_num_threads()}"}


CONTESTANTS = {
    "faiss_knn": faiss_knn,
    "repbench_knn": repbench("knn", variants=(("cosine", "weighted", (K,)),)),
    "repbench_knn_all": repbench("knn"),  # the default call: 7 entries, k up to 200, plus a euclidean search
    "sklearn_linear": sklearn_linear,
    "repbench_linear": repbench("linear"),
    "faiss_kmeans": faiss_kmeans,
    "sklearn_kmeans": sklearn_kmeans,
    "repbench_kmeans": repbench_kmeans,
}


if __name__ == "__main__":
    name, folder = sys.argv[1:3]
    data = [np.load(f"{folder}/{part}.npy") for part in ("x", "y", "xt", "yt")]
    print(json.dumps(CONTESTANTS[name](*data)))
