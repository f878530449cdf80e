"""Few-shot linear probes: the linear protocol with 1% / 10% of the labels and with 1, 5, 10 labels per class.

SimCLR's and BYOL's semi-supervised splits use 1% and 10% of the labels, class-balanced; CLIP
(Fig. 6) and CLIP_benchmark's ``fewshot_k`` use k labels per class. Each setting draws ``draws``
stratified labelled subsets (seeded); the regularisation of each draw is chosen by the linear
protocol's coarse-to-fine search on a validation set of the same size drawn from the remaining
train labels (a labelled set of 10 images cannot spare a validation split), and the probe fitted
on the labelled subset alone is scored on the whole test set. All draws of a setting are solved
together as one batch of problems; with fewer labels than feature dimensions they are solved, exactly,
in the span of their labelled samples (see ``protocols.solvers.logreg.span_basis``). Reported: mean and std over draws.
"""

from __future__ import annotations

import numpy as np
import torch

from protocols.base import Features, Metrics, classification_metrics, threads_by_size
from protocols.linear import GRID, prepare, sweep
from protocols.solvers.logreg import Problem, from_span, predict_logits, span_basis, to_span, with_bias
from protocols.solvers.products import product_dtype

DEFAULT_FRACTIONS = (0.01, 0.1)
DEFAULT_SHOTS = (1, 5, 10)


def per_class_counts(y: torch.Tensor, num_classes: int, *, fraction: float | None = None,
                     shots: int | None = None) -> np.ndarray:
    """Labels to draw per class: ``shots`` each, or ``fraction`` of each class (at least one)."""
    sizes = np.bincount(y.cpu().numpy(), minlength=num_classes)
    want = np.full(num_classes, shots) if shots is not None else np.maximum(1, np.round(sizes * fraction)).astype(int)
    return np.minimum(want, sizes)


def draw(y: torch.Tensor, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A labelled subset with ``counts[c]`` samples of class c, and a disjoint validation set of the same
    counts where the class has enough samples left. Returns sorted index arrays."""
    labels = y.cpu().numpy()
    lab, val = [], []
    for c, k in enumerate(counts):
        members = rng.permutation(np.flatnonzero(labels == c))
        lab.append(members[:k])
        val.append(members[k:2 * k])
    return np.sort(np.concatenate(lab)), np.sort(np.concatenate(val))


def _settings(fractions, shots) -> list[tuple[str, dict]]:
    out = [(f"fewshot_{f * 100:g}pct", {"fraction": f}) for f in fractions]
    return out + [(f"fewshot_{k}shot", {"shots": k}) for k in shots]


@threads_by_size(lambda train, test: train.x.numel() // 10)  # the largest labelled set is 10%
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             fractions=DEFAULT_FRACTIONS, shots=DEFAULT_SHOTS, draws: int = 3, normalise: bool = True,
             max_iter: int = 500, tol: float = 1e-4) -> Metrics:
    """``fewshot_1pct``, ``fewshot_10pct``, ``fewshot_1shot``, ``fewshot_5shot``, ``fewshot_10shot``: test top-1/top-5."""
    dev = torch.device(device)
    c = max(train.num_classes, test.num_classes)
    x_all = prepare(train.x, normalise)
    x_test = prepare(test.x, normalise).to(dev)
    y_test = test.y.cpu()
    out: Metrics = {}
    for offset, (key, setting) in enumerate(_settings(fractions, shots)):
        counts = per_class_counts(train.y, c, **setting)
        rng = np.random.default_rng([seed, offset])
        picks = [draw(train.y, counts, rng) for _ in range(draws)]
        lab = torch.from_numpy(np.stack([p[0] for p in picks]))
        # Validation sets can differ in size when a class runs out; trim all draws to the smallest.
        m = min(len(p[1]) for p in picks)
        val = torch.from_numpy(np.stack([p[1][rng.permutation(len(p[1]))[:m]] for p in picks]))
        if m == 0:
            raise ValueError(f"{key}: no train samples left for validation; use fewer shots")
        x_lab, x_val = x_all[lab].to(dev), x_all[val].to(dev)
        reduce = lab.shape[1] < x_all.shape[1]  # fewer labels than features: solve in their span (exact)
        if reduce:
            mean, q = span_basis(x_lab)
            x_lab, x_val = to_span(x_lab, mean, q), to_span(x_val, mean, q)
        problem = Problem.build(with_bias(x_lab), train.y[lab].to(dev), c, product_dtype(lab.shape[1], dev))
        peak, w, log = sweep(problem, x_val, train.y[val].to(dev), max_iter=max_iter, tol=tol)
        if reduce:
            w = from_span(w, mean, q)
        logits = predict_logits(w, x_test[None]).cpu()  # (draws, M, C)
        per_draw = [classification_metrics(lg, y_test, c) for lg in logits]
        top1, top5, recall = ([d[k] for d in per_draw] for k in ("top1", "top5", "mean_per_class_recall"))
        out[key] = {
            **setting, "top1": float(np.mean(top1)), "top1_std": float(np.std(top1)), "top5": float(np.mean(top5)),
            "mean_per_class_recall": float(np.mean(recall)), "top1_draws": list(top1),
            "regularisation": [float(GRID[i]) for i in peak], "val_top1": log["val_top1"],
            "n_labelled": int(counts.sum()), "n_val": m, "draws": draws, "seed": seed, "normalised": normalise,
            "selection": "coarse-to-fine on a disjoint validation draw of the same size", "grid": "logspace(-6,2,97)",
            "matmul_dtype": str(problem.dtype).removeprefix("torch."), "solved_in_label_span": reduce,
            "max_iter": max_iter, "tol": tol,
            "n_test": len(test), "num_classes": c,
        }
    return out
