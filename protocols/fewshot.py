"""Few-shot linear probes: the linear protocol with 1% / 10% of the labels and with 1, 5, 10 labels per class.

SimCLR's and BYOL's semi-supervised splits use 1% and 10% of the labels, class-balanced; CLIP
(Fig. 6) and CLIP_benchmark's ``fewshot_k`` use k labels per class. Each setting draws ``draws``
stratified labelled subsets (seeded) and uses no other label: a validation set drawn from the remaining
labels would double the budget (CLIP_benchmark issue #125). The regularisation of each draw is chosen by the
linear protocol's coarse-to-fine search scored by stratified k-fold cross-validation inside the labelled subset
(k = min(5, smallest labelled class)) where every class has at least 2 labelled images; with one labelled
image in a class it is fixed: scikit-learn's default C = 1 (lambda = 1 / n), as the few-shot logistic
regression of Tian et al. 2020 ("Rethinking few-shot image classification", WangYueFt/rfs eval/meta_eval.py:
LogisticRegression with C unset on L2-normalised features). The probe fitted on the labelled subset is scored
on the whole test set; the entry's ``selection`` says which rule chose lambda. All draws (and their folds) of a
setting are solved together as one batch of problems; with fewer labels than feature dimensions they are
solved, exactly, in the span of their labelled samples (see ``protocols.solvers.logreg.span_basis``).
Reported: mean and std over draws. A setting is skipped (``limits``) where a class has fewer images than it
labels, where it labels fewer than 2 images in all, or where it would exceed the memory budget.
"""

from __future__ import annotations

import numpy as np
import torch

from protocols.base import Features, Metrics, classification_metrics, threads_by_size, validated
from protocols.limits import Shape, over_budget, skip_all, skipped
from protocols.linear import GRID, HISTORY, SOLVER_FORMULA, cross_validate, cv_bytes, cv_folds, prepare, solver_bytes
from protocols.solvers.lbfgs import fit
from protocols.solvers.logreg import Problem, from_span, into_span, predict_logits, span_basis, to_span, with_bias
from protocols.solvers.products import product_dtype

DEFAULT_FRACTIONS = (0.01, 0.1)
DEFAULT_SHOTS = (1, 5, 10)
FIXED_C = 1.0  # scikit-learn's default C, the fixed choice of Tian et al. 2020 (module docstring)
FIXED = "fixed: scikit-learn's default C=1, lambda = 1/n (Tian et al. 2020, rfs meta_eval.py)"


def per_class_counts(sizes: np.ndarray, *, fraction: float | None = None, shots: int | None = None) -> np.ndarray:
    """Labels to draw per class of ``sizes`` (C,) images: ``shots`` each, or ``fraction`` of each class (at least one)."""
    want = np.full(len(sizes), shots) if shots is not None else np.maximum(1, np.round(sizes * fraction)).astype(int)
    return np.minimum(want, sizes)


def limits(shape: Shape, *, fractions=DEFAULT_FRACTIONS, shots=DEFAULT_SHOTS, draws: int = 3) -> dict[str, str]:
    """A setting needs its labelled images in every class with training images, 2 labelled images in all; and memory."""
    out = {}
    for key, setting in _settings(fractions, shots):
        out[key] = _too_few(shape.train_counts, setting) or _memory(shape, setting, draws)
    return out


def _too_few(sizes: np.ndarray, setting: dict) -> str:
    want = np.full(len(sizes), setting["shots"]) if "shots" in setting else per_class_counts(sizes, **setting)
    short = np.flatnonzero((sizes > 0) & (sizes < want))
    if len(short):
        c = short[np.argmin(sizes[short])]
        return f"needs {want[c]} training images per class (the labelled ones); class {c} has {sizes[c]}"
    n = int(np.minimum(want, sizes).sum())
    return "" if n >= 2 else f"needs at least 2 labelled training images in all to fit a probe; has {n}"


def _memory(shape: Shape, setting: dict, draws: int) -> str:
    """Bytes: the normalised train and test features; per draw the labelled rows and, where there are fewer labels
    than features, their span basis (float64 QR); the cross-validation of the draws (``cv_bytes``, where every
    class has 2 labels); the final fit on n labels in d = min(n, D) dimensions; and the test logits."""
    if shape.dim is None:
        return ""
    counts = per_class_counts(shape.train_counts, **setting)
    n = int(counts.sum())
    big_n, m, d, c = shape.n_train, shape.n_test, shape.dim, shape.num_classes
    span = min(n, d)
    need = 4 * (big_n + m) * d + draws * (64 * n * d + 4 * m * (d + c)) + solver_bytes(draws, n, span, c)
    formula = (f"4(N+M)D + B(64nD + 4M(D+C)) + {SOLVER_FORMULA.format(B='B', n='n', d='d')}, d = min(n, D), with "
               f"N={big_n}, M={m}, D={d}, C={c}, B={draws} draws, n={n} labelled")
    folds = cv_folds(counts)
    if folds >= 2:
        folds_need, folds_formula = cv_bytes(draws, folds, n, d, c)
        need += folds_need
        formula = f"{formula}; + {folds_formula}"
    return over_budget(need, formula, shape.device)


def draw(y: torch.Tensor, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A labelled subset with ``counts[c]`` samples of class c: sorted indices."""
    labels = y.cpu().numpy()
    # Each class's members in index order, grouped by one stable sort (not one scan of the labels per class).
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(np.bincount(labels, minlength=len(counts)))[:-1])
    return np.sort(np.concatenate([rng.permutation(members)[:k] for k, members in zip(counts, by_class, strict=True)]))


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
    kw = {"max_iter": max_iter, "tol": tol}
    out: Metrics = {}
    for offset, (key, setting) in enumerate(_settings(fractions, shots)):
        if reasons[key]:
            out[key] = skipped(reasons[key])
            continue
        counts = per_class_counts(shape.train_counts, **setting)
        rng = np.random.default_rng([seed, offset])
        lab = torch.from_numpy(np.stack([draw(train.y, counts, rng) for _ in range(draws)]))
        x_lab, y_lab = x_all[lab].to(dev), train.y[lab].to(dev)
        w, chosen = _fit_draws(x_lab, y_lab, c, cv_folds(counts), seed, **kw)
        logits = predict_logits(w, x_test[None]).cpu()  # (draws, M, C)
        per_draw = [classification_metrics(lg, y_test, c) for lg in logits]
        top1, top5, recall = ([d[k] for d in per_draw] for k in ("top1", "top5", "mean_per_class_recall"))
        out[key] = {
            **setting, "top1": float(np.mean(top1)), "top1_std": float(np.std(top1)), "top5": float(np.mean(top5)),
            "mean_per_class_recall": float(np.mean(recall)), "top1_draws": list(top1), **chosen,
            "n_labelled": int(counts.sum()), "draws": draws, "seed": seed,
            "normalised": normalise, "grid": "logspace(-6,2,97)",
            "solved_in_label_span": lab.shape[1] < x_all.shape[1], "max_iter": max_iter, "tol": tol,
            "n_test": len(test), "num_classes": c,
        }
    return out


def _fit_draws(x: torch.Tensor, y: torch.Tensor, c: int, folds: int, seed: int, *, max_iter: int, tol: float
               ) -> tuple[torch.Tensor, dict]:
    """Each draw's probe on its labelled rows alone, lambda by cross-validation inside them (``folds`` >= 2) or
    fixed. Shape: x (B, n, D) prepared, y (B, n) -> W (B, D+1, C), the record's fields on the choice."""
    b, n, d = x.shape
    if folds >= 2:
        peak, start, log = cross_validate(x, y, c, folds, seed, max_iter=max_iter, tol=tol)
        lam = GRID[peak]
        chosen = {"selection": f"stratified {folds}-fold cross-validation within the labelled set", "cv_folds": folds,
                  "val_top1": log["val_top1"], "search": "coarse-to-fine (CLIP_benchmark)"}
    else:
        lam, start = np.full(b, 1.0 / (FIXED_C * n)), None
        chosen = {"selection": FIXED, "cv_folds": 0, "C_sklearn": FIXED_C}
    reduce = n < d  # fewer labels than features: solve in their span (exact)
    if reduce:
        mean, q = span_basis(x)
        x = to_span(x, mean, q)
        start = None if start is None else into_span(start.to(x.device), mean, q)
    problem = Problem.build(with_bias(x), y, c, product_dtype(n, x.device))
    w0 = None if start is None else start[:, None]
    w, _ = fit(problem, torch.tensor(lam, dtype=torch.float32)[:, None], w0, max_iter=max_iter, tol=tol, memory=HISTORY)
    w = w[:, 0]
    return (from_span(w, mean, q) if reduce else w), {
        **chosen, "regularisation": [float(v) for v in lam], "matmul_dtype": str(problem.dtype).removeprefix("torch.")}
