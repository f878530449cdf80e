"""Protocol speed against the reference implementations, on Fashion-MNIST raw pixels (60k x 784 in [0, 1], 10k test).

Targets (issue 6):
- kNN (k=20, T=0.07, cosine, weighted vote): at or under faiss-cpu's exact search time, identical accuracy;
- linear probe (the default protocol: 15-value sweep on a validation split + refit): >= 10x faster than
  scikit-learn's LogisticRegression(lbfgs, C=1, max_iter=200) at equal or better test accuracy (repbench's time
  the mean of LINEAR_ROUNDS calls, each call's time in the results);
- K-Means (K=10, one restart, fit on the 10k test split, 5 seeds): within 2x faiss's time, NMI >= scikit-learn's
  (every contestant's time the mean of KMEANS_ROUNDS passes over the seeds: one ~0.6-s pass varied 0.6-1.2 s).

Each reference runs in a fresh subprocess of the same pytest run, right before repbench's turn, with
the same 2 threads: faiss-cpu bundles its own OpenMP runtime, whose idle workers spin on the 2 cores
and starved torch when both lived in one process (measured: torch K-Means 9-23 s after faiss had run,
1.0 s without it). Every process runs with OMP_WAIT_POLICY=PASSIVE (set here before torch loads, unless
the caller set it): on this shared machine OpenMP's default spin-waiting made the linear probe 15-24 s
instead of 8.3 s (same code, same load, alternating runs). Only computation is timed, for every contestant.
Run: ``pytest benchmarks/test_protocols_bench.py --benchmark-only -s``; with REPBENCH_BENCH_OUT=DIR the
measured table is also written to DIR/protocols.json and DIR/protocols.md. Ratios are asserted only with
REPBENCH_BENCH_STRICT=1 (a loaded machine can invert any ratio); accuracies always.
"""

from __future__ import annotations

import os
import sys

POLICY_BEFORE_TORCH = "torch" not in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from protocols import PROTOCOLS  # noqa: E402
from protocols.base import Features, true_class_rank  # noqa: E402
from protocols.knn import class_votes, search  # noqa: E402
from protocols.solvers.kmeans import fit_predict  # noqa: E402

THREADS = 2
SEEDS = range(5)
LINEAR_ROUNDS = 5
KMEANS_ROUNDS = 3  # every K-Means contestant: the mean of 3 passes over the 5 seeds (~0.6 s each)
ROWS: dict[str, dict] = {}
STRICT = os.environ.get("REPBENCH_BENCH_STRICT") == "1"
COMMAND = ("REPBENCH_BENCH_OUT=results/benchmarks pytest benchmarks/test_protocols_bench.py --benchmark-only -s "
           "-p no:cacheprovider")


def load():
    """Fashion-MNIST as float32 pixels in [0, 1]: (train x, train y, test x, test y)."""
    from bench.data import load_dataset

    ds = load_dataset("fashion-mnist")
    flat = lambda t: t.reshape(len(t), -1).float().div_(255)
    return flat(ds.train_x), ds.train_y, flat(ds.test_x), ds.test_y


@pytest.fixture(scope="module")
def fmnist():
    torch.set_num_threads(THREADS)
    try:
        data = load()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available: {err}")
    yield data
    _write_results()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def mean_time(fn, rounds: int, benchmark=None):
    """(the last call's output, the mean seconds of ``rounds`` calls, each call's seconds), the calls made by
    pytest-benchmark's ``pedantic`` when given its fixture."""
    times = []

    def once():
        out, seconds = timed(fn)
        times.append(seconds)
        return out

    if benchmark is None:
        for _ in range(rounds):
            out = once()
    else:
        out = benchmark.pedantic(once, rounds=rounds, iterations=1)
    return out, sum(times) / rounds, [round(t, 3) for t in times]


def knn_top1(score, index, train_y, test_y, k=20, t=0.07):
    votes = class_votes(torch.as_tensor(score), train_y[torch.as_tensor(index)], 10, k, t)
    return (true_class_rank(votes, test_y, votes=True) == 0).float().mean().item()


# --------------------------------------------------------------------------- references, each in its own process


def reference_faiss_knn(x, y, xt, yt):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    xn, qn = (torch.nn.functional.normalize(a, dim=1).numpy() for a in (x, xt))
    t = time.perf_counter()
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    score, idx = index.search(qn, 20)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "top1": knn_top1(score, idx, y, yt)}


def reference_sklearn_linear(x, y, xt, yt):
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    model = LogisticRegression(C=1.0, max_iter=200).fit(x.numpy(), y.numpy())
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "top1": float(model.score(xt.numpy(), yt.numpy()))}


def reference_faiss_kmeans(x, y, xt, yt):
    import faiss
    from sklearn.metrics import normalized_mutual_info_score as nmi

    faiss.omp_set_num_threads(THREADS)
    xn = torch.nn.functional.normalize(xt, dim=1).numpy()

    def five_seeds():
        labels = []
        for s in SEEDS:
            km = faiss.Kmeans(xn.shape[1], 10, seed=1234 + s)
            km.train(xn)
            labels.append(km.index.search(xn, 1)[1][:, 0])
        return labels

    labels, seconds, times = mean_time(five_seeds, KMEANS_ROUNDS)
    return {"seconds": seconds, "rounds_s": times, "nmi": float(np.mean([nmi(yt.numpy(), lab) for lab in labels]))}


def reference_sklearn_kmeans(x, y, xt, yt):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    xn = torch.nn.functional.normalize(xt, dim=1).numpy()
    labels, seconds, _ = mean_time(lambda: [KMeans(10, n_init=1, random_state=s).fit(xn).labels_ for s in SEEDS],
                                   KMEANS_ROUNDS)
    return {"seconds": seconds, "nmi": float(np.mean([nmi(yt.numpy(), lab) for lab in labels]))}


def isolated(name: str) -> dict:
    """Run ``reference_<name>`` in a fresh Python process with THREADS threads everywhere; its JSON result."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS), "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, env=env, cwd=root,
                          check=False, timeout=3600)
    if done.returncode != 0:
        if "No module named 'faiss'" in done.stderr:
            pytest.skip("faiss-cpu is not installed")
        raise RuntimeError(f"reference {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the comparisons


def test_knn_vs_faiss(benchmark, fmnist):
    x, y, xt, yt = fmnist
    ref = isolated("faiss_knn")
    (score, index), t_ours = timed(lambda: benchmark.pedantic(lambda: search(x, xt, 20), rounds=1, iterations=1))
    ours = knn_top1(score, index, y, yt)
    record(benchmark, "knn", "kNN k=20 T=0.07 cosine, 60k -> 10k", "faiss-cpu IndexFlatIP", t_ours, ref["seconds"],
           ours, ref["top1"], "top1", target="time ratio <= 1, identical accuracy", met=t_ours <= ref["seconds"])
    assert abs(ours - ref["top1"]) <= 2e-4  # at most 2 of 10k test images on a float32 near-tie
    assert not STRICT or t_ours <= ref["seconds"]


def test_linear_vs_sklearn(benchmark, fmnist):
    x, y, xt, yt = fmnist
    ref = isolated("sklearn_linear")
    # The mean of LINEAR_ROUNDS calls (the same result each time) against scikit-learn's one 30-s fit: both are
    # averages over ~15-30 s of this host's fluctuating speed, where one 3-s call alone was 2.7-3.7 s.
    out, t_ours, rounds = mean_time(lambda: PROTOCOLS.get("linear")(Features(x, y), Features(xt, yt)),
                                    LINEAR_ROUNDS, benchmark)
    entry = out["linear"]
    single, t_single = timed(lambda: single_fit(x, y, xt, yt))
    record(benchmark, "linear", "linear probe (default: CLIP_benchmark sweep on a val split + refit)",
           "sklearn LogisticRegression(lbfgs, C=1, max_iter=200)", t_ours, ref["seconds"], entry["top1"], ref["top1"],
           "top1", target="time ratio <= 0.1, accuracy >= reference",
           met=t_ours * 10 <= ref["seconds"] and entry["top1"] >= ref["top1"],
           extra={**{k: entry[k] for k in ("regularisation", "fits", "iterations", "converged", "matmul_dtype")},
                  "repbench_rounds_s": rounds,
                  "single_fit_s": round(t_single, 3), "single_fit_top1": round(single["top1"], 4),
                  "single_fit_iterations": single["iterations"]})
    print("linear, each call (s):", ", ".join(f"{t:.2f}" for t in rounds))
    assert entry["top1"] >= ref["top1"]
    assert not STRICT or t_ours * 10 <= ref["seconds"]


def single_fit(x, y, xt, yt):
    """repbench's solver on sklearn's exact problem: raw pixels, C=1 (lambda = 1/N), to tolerance 1e-4."""
    from protocols.solvers.lbfgs import fit
    from protocols.solvers.logreg import Problem, predict_logits, with_bias
    from protocols.solvers.products import product_dtype

    problem = Problem.build(with_bias(x)[None], y[None], 10, product_dtype(len(x), torch.device("cpu")))
    w, info = fit(problem, torch.tensor([[1.0 / len(x)]]), tol=1e-4)
    top1 = (predict_logits(w[0, 0], xt).argmax(1) == yt).float().mean().item()
    return {"top1": top1, "iterations": int(info["iterations"][0, 0])}


def test_kmeans_vs_faiss_and_sklearn(benchmark, fmnist):
    from sklearn.metrics import normalized_mutual_info_score as nmi

    _, _, xt, yt = fmnist
    xn = torch.nn.functional.normalize(xt, dim=1)
    ref, sk = isolated("faiss_kmeans"), isolated("sklearn_kmeans")
    labels, t_ours, rounds = mean_time(
        lambda: [fit_predict(xn, xn, 10, n_init=1, seeds=(s,))[0][0].numpy() for s in SEEDS], KMEANS_ROUNDS, benchmark)
    ours = float(np.mean([nmi(yt.numpy(), lab) for lab in labels]))
    record(benchmark, "kmeans", "K-Means K=10, n_init=1, fit on the 10k test split, 5 seeds", "faiss Kmeans (defaults)",
           t_ours, ref["seconds"], ours, ref["nmi"], "nmi", target="time <= 2x faiss, NMI >= sklearn's",
           met=t_ours <= 2 * ref["seconds"] and ours >= sk["nmi"],
           extra={"sklearn_s": round(sk["seconds"], 3), "sklearn_nmi": round(sk["nmi"], 4),
                  "repbench_rounds_s": rounds, "reference_rounds_s": ref["rounds_s"]})
    assert ours >= sk["nmi"] - 0.02  # mean of 5 seeds; a single seed's NMI varies by ~0.02
    assert not STRICT or (t_ours <= 2 * ref["seconds"] and ours >= sk["nmi"])


def test_default_protocols_on_small_features(benchmark):
    """What the pipeline runs after every training run: default settings on 5000 x 256 / 10000 x 256."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 256, generator=g)
    y, yt = torch.randint(0, 10, (5000,), generator=g), torch.randint(0, 10, (10000,), generator=g)
    train = Features((centers[y] + 2 * torch.randn(5000, 256, generator=g)).relu(), y)
    test = Features((centers[yt] + 2 * torch.randn(10000, 256, generator=g)).relu(), yt)
    times = {}
    for name in ("knn", "linear", "kmeans", "fewshot"):
        _, times[name] = timed(lambda n=name: PROTOCOLS.get(n)(train, test))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({f"{k}_s": round(v, 3) for k, v in times.items()})
    ROWS["defaults_5000x256"] = {"seconds": {k: round(v, 3) for k, v in times.items()},
                                 "target": "knn/linear/kmeans < 3 s, fewshot < 5 s"}
    print("\n" + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


# --------------------------------------------------------------------------- results


def record(benchmark, key, what, reference, t_ours, t_ref, ours, ref, metric, *, target, met, extra=None):
    row = {"what": what, "reference": reference, "repbench_s": round(t_ours, 3), "reference_s": round(t_ref, 3),
           "time_ratio": round(t_ours / t_ref, 3), f"repbench_{metric}": round(ours, 4),
           f"reference_{metric}": round(ref, 4), "target": target, "met": bool(met), **(extra or {})}
    ROWS[key] = row
    benchmark.extra_info.update(row)
    print(f"\n{key}: repbench {t_ours:.2f} s vs {reference} {t_ref:.2f} s (ratio {t_ours / t_ref:.3f}); "
          f"{metric} {ours:.4f} vs {ref:.4f}")


def _write_results():
    out = os.environ.get("REPBENCH_BENCH_OUT")
    if not out or not ROWS:
        return
    from bench.store import _git, device_name

    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    meta = {"git_sha": _git("rev-parse", "HEAD"), "git_dirty_outside_results": None if status is None else bool(status),
            "cpu": device_name("cpu"),
            "threads": THREADS, "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "policy_set_before_torch": POLICY_BEFORE_TORCH,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2), "command": COMMAND,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "protocols.json").write_text(json.dumps({"meta": meta, "results": ROWS}, indent=2) + "\n")
    lines = ["# Protocol benchmarks: Fashion-MNIST raw pixels, 2 threads", "",
             f"Measured {meta['time']}, code {meta['git_sha']} (dirty outside results/: "
             f"{meta['git_dirty_outside_results']}), on {meta['cpus']} CPUs of {meta['cpu']} (shared; 1-minute "
             f"load average at the end {meta['load_average_1m_at_end']}), torch {meta['torch']}. Each reference "
             f"ran in its own fresh "
             f"process of the same run, just before repbench; only computation is timed; OMP_WAIT_POLICY="
             f"{meta['omp_wait_policy']} in every process.", "",
             f"Command: `{COMMAND}`", "",
             "| protocol | repbench s | reference | reference s | ratio | repbench | reference | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in ROWS.items():
        if "reference" not in r:
            continue
        metric = next(k.removeprefix("reference_") for k in r if k.startswith("reference_") and k != "reference_s")
        lines.append(f"| {key}: {r['what']} | {r['repbench_s']} | {r['reference']} | {r['reference_s']} | "
                     f"{r['time_ratio']} | {metric} {r['repbench_' + metric]} | {r['reference_' + metric]} | "
                     f"{r['target']} | {'yes' if r['met'] else 'no'} |")
        if "repbench_rounds_s" in r:
            lines.append(f"| {key}: each of the {len(r['repbench_rounds_s'])} timed calls (s) | "
                         f"{', '.join(map(str, r['repbench_rounds_s']))} | | "
                         f"{', '.join(map(str, r.get('reference_rounds_s', [])))} | | | | | |")
        if "single_fit_s" in r:
            lines.append(f"| {key}: one fit of sklearn's problem (raw pixels, C=1, tol 1e-4, "
                         f"{r['single_fit_iterations']} iterations) | {r['single_fit_s']} | same | {r['reference_s']} | "
                         f"{round(r['single_fit_s'] / r['reference_s'], 3)} | top1 {r['single_fit_top1']} | "
                         f"{r['reference_top1']} | | |")
        if "sklearn_s" in r:
            lines.append(f"| {key}: same, scikit-learn | | KMeans(n_init=1) | {r['sklearn_s']} | "
                         f"{round(r['repbench_s'] / r['sklearn_s'], 3)} | | {metric} {r['sklearn_nmi']} | | |")
    if "defaults_5000x256" in ROWS:
        d = ROWS["defaults_5000x256"]
        lines += ["", "Default protocol calls on 5000 x 256 train / 10000 x 256 test features (what the pipeline runs): "
                  + ", ".join(f"{k} {v} s" for k, v in d["seconds"].items()) + f" (target: {d['target']})."]
    (path / "protocols.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":  # a reference, run by ``isolated`` in its own process
    torch.set_num_threads(THREADS)
    result = globals()[f"reference_{sys.argv[1]}"](*load())
    print(json.dumps(result))
