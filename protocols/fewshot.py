"""Few-shot linear probes: the linear protocol with 1% / 10% of the labels and with 1, 5, 10 labels per class.

SimCLR's and BYOL's semi-supervised splits use 1% and 10% of the labels, class-balanced; CLIP
(Fig. 6) and CLIP_benchmark's ``fewshot_k`` use k labels per class. Each setting draws ``draws``
stratified labelled subsets (seeded); the regularisation of each draw is chosen by the linear
protocol's coarse-to-fine search on a validation set of the same size drawn from the remaining
train labels (a labelled set of 10 images cannot spare a validation split), and the probe fitted
on the labelled subset alone is scored on the whole test set. All draws of a setting are solved
together as one batch of problems; with fewer labels than feature dimensions they are solved, exactly,
in the span of their labelled samples (see ``protocols.solvers.logreg.span_basis``). Reported: mean and std over draws.
A setting is skipped (``limits``) where a class has too few images for it, or where it would exceed the memory budget.
"""

from __future__ import annotations

import numpy as np
import torch

from protocols.base import Features, Metrics, classification_metrics, threads_by_size, validated
from protocols.limits import Shape, over_budget, skip_all, skipped
from protocols.linear import GRID, SOLVER_FORMULA, prepare, solver_bytes, sweep
from protocols.solvers.logreg import Problem, from_span, predict_logits, span_basis, to_span, with_bias
from protocols.solvers.products import product_dtype

DEFAULT_FRACTIONS = (0.01, 0.1)
DEFAULT_SHOTS = (1, 5, 10)


def per_class_counts(sizes: np.ndarray, *, fraction: float | None = None, shots: int | None = None) -> np.ndarray:
    """Labels to draw per class of ``sizes`` (C,) images: ``shots`` each, or ``fraction`` of each class (at least one)."""
    want = np.full(len(sizes), shots) if shots is not None else np.maximum(1, np.round(sizes * fraction)).astype(int)
    return np.minimum(want, sizes)


def limits(shape: Shape, *, fractions=DEFAULT_FRACTIONS, shots=DEFAULT_SHOTS, draws: int = 3) -> dict[str, str]:
    """A setting needs, in every class with training images, its labelled images plus one to validate on; and memory."""
    out = {}
    for key, setting in _settings(fractions, shots):
        out[key] = _too_few(shape.train_counts, setting) or _memory(shape, setting, draws)
    return out


def _too_few(sizes: np.ndarray, setting: dict) -> str:
    want = np.full(len(sizes), setting["shots"]) if "shots" in setting else per_class_counts(sizes, **setting)
    short = np.flatnonzero((sizes > 0) & (sizes < want + 1))
    if not len(short):
        return ""
    c = short[np.argmin(sizes[short])]
    return (f"needs {want[c] + 1} training images per class ({want[c]} labelled + 1 to validate the regularisation "
            f"on); class {c} has {sizes[c]}")


def _memory(shape: Shape, setting: dict, draws: int) -> str:
    """Bytes: the normalised train and test features, per draw the labelled and validation rows, their span basis
    (float64 QR) where there are fewer labels than features, the solver on n labels in d = min(n, D) dimensions,
    and the test logits."""
    if shape.dim is None:
        return ""
    n = int(per_class_counts(shape.train_counts, **setting).sum())
    big_n, m, d, c = shape.n_train, shape.n_test, shape.dim, shape.num_classes
    span = min(n, d)
    need = 4 * (big_n + m) * d + draws * (64 * n * d + 4 * m * (d + c)) + solver_bytes(draws, n, span, c)
    formula = (f"4(N+M)D + B(64nD + 4M(D+C)) + {SOLVER_FORMULA.format(B='B', n='n', d='d')}, d = min(n, D), with "
               f"N={big_n}, M={m}, D={d}, C={c}, B={draws} draws, n={n} labelled")
    return over_budget(need, formula, shape.device)


def draw(y: torch.Tensor, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A labelled subset with ``counts[c]`` samples of class c, and a disjoint validation set of the same
    counts where the class has enough samples left. Returns sorted index arrays."""
    labels = y.cpu().numpy()
    # Each class's members in index order, grouped by one stable sort (not one scan of the labels per class).
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(np.bincount(labels, minlength=len(counts)))[:-1])
    lab, val = [], []
    for k, members in zip(counts, by_class, strict=True):
        members = rng.permutation(members)
        lab.append(members[:k])
        val.append(members[k:2 * k])
    return np.sort(np.concatenate(lab)), np.sort(np.concatenate(val))


def _settings(fractions, shots) -> list[tuple[str, dict]]:
    out = [(f"fewshot_{f * 100:g}pct", {"fraction": f}) for f in fractions]
    return out + [(f"fewshot_{k}shot", {"shots": k}) for k in shots]


@validated
@threads_by_size(lambda train, test: train.x.numel() // 10)  # the largest labelled set is 10%
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             fractions=DEFAULT_FRACTIONS, shots=DEFAULT_SHOTS, draws: int = 3, normalise: bool = True,
             max_iter: int = 500, tol: float = 1e-4) -> Metrics:
    """``fewshot_1pct``, ``fewshot_10pct``, ``fewshot_1shot``, ``fewshot_5shot``, ``fewshot_10shot``: test top-1/top-5."""
    shape = Shape.of(train, test, device)
    reasons = limits(shape, fractions=fractions, shots=shots, draws=draws)
    if all(reasons.values()):
        return skip_all(reasons)
    dev = torch.device(device)
    c = shape.num_classes
    x_all = prepare(train.x, normalise)
    x_test = prepare(test.x, normalise).to(dev)
    y_test = test.y.cpu()
    out: Metrics = {}
    for offset, (key, setting) in enumerate(_settings(fractions, shots)):
        if reasons[key]:
            out[key] = skipped(reasons[key])
            continue
        counts = per_class_counts(shape.train_counts, **setting)
        rng = np.random.default_rng([seed, offset])
        picks = [draw(train.y, counts, rng) for _ in range(draws)]
        lab = torch.from_numpy(np.stack([p[0] for p in picks]))
        # Validation sets can differ in size when a class runs out; trim all draws to the smallest.
        m = min(len(p[1]) for p in picks)
        val = torch.from_numpy(np.stack([p[1][rng.permutation(len(p[1]))[:m]] for p in picks]))
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
