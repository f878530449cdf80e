"""Linear probe on frozen features: L2-regularised multinomial logistic regression.

The recipe of the CLIP paper (App. A.3) and CLIP_benchmark's ``linear_probe.py``: cached features,
L2-normalised as CLIP_benchmark's featurizer, no augmentation; the regularisation swept over
``logspace(-6, 2, 97)`` by CLIP_benchmark's coarse-to-fine search (7 coarse values, then +-8, 4, 2, 1 grid
steps around the peak), scored once on test. Where the search is scored: on a validation split carved from
train, the chosen value refit on train+val (CLIP_benchmark); or, on a small training set (at most SMALL_ROWS
rows, every class at least twice), by stratified k-fold cross-validation over all of train (k = min(CV_FOLDS,
smallest class)), as scikit-learn's LogisticRegressionCV, the chosen value refit on train: one split of a small
set is a noisy judge (on digits it chose a value a point worse). The k folds are solved together as one batch.
The solver (protocols/solvers/) fits many values at once and warm-starts each later value from the ones
already fitted, so only the 7 coarse values are solved from zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.splits import stratified_split
from protocols.base import Features, Metrics, classification_metrics, threads_by_size, validated
from protocols.limits import Shape, over_budget, skipped
from protocols.solvers.folds import stratified_folds
from protocols.solvers.lbfgs import fit
from protocols.solvers.logreg import Problem, from_span, predict_logits, rows_with_bias, span_basis, to_span, with_bias
from protocols.solvers.products import Products, product_dtype

GRID = np.logspace(-6, 2, 97)
COARSE = tuple(range(0, 97, 16))  # CLIP_benchmark's np.logspace(-6, 2, 7) inside the 97-point grid
SPANS = (8, 4, 2, 1)
HISTORY = 60  # L-BFGS pairs kept per model (``fit``'s memory)
# Cross-validation costs CV_FOLDS sweeps on 80% of the rows instead of one: on digits (1,437 x 64) 1 s against
# 0.13 s, but on 4,000 x 784 pixels 106 s against 11 s (2 loaded cores). Digits-sized sets, where one split's
# choice is noisiest, get it; larger sets keep the split (unchanged).
SMALL_ROWS = 2_500
CV_FOLDS = 5


# What the solver allocates for B problems of n rows of d features and C classes, in bytes: the d x d
# preconditioner (scatter, its eigendecomposition with LAPACK's workspace, the rotation; float64 and float32), x
# with its bias column (float32, bfloat16 and transposed copies, the centred rows of the scatter), the L-BFGS pairs
# and iterates of the 7 coarse lambdas solved together, and their logits and residuals. Measured resident peaks
# are 25-70% of it (tests/test_faults_protocols.py).
SOLVER_FORMULA = "{B}(48({d}+1)^2 + 12{n}({d}+1) + 3640C({d}+1) + 112C{n})"


def solver_bytes(b: int, n: int, d: int, c: int) -> int:
    lams = len(COARSE)
    return b * (48 * (d + 1) ** 2 + 12 * n * (d + 1) + 4 * lams * (2 * HISTORY + 10) * (d + 1) * c + 16 * lams * c * n)


def cv_folds(counts: np.ndarray) -> int:
    """k of the stratified k-fold choice for per-class counts (C,): min(CV_FOLDS, smallest class present);
    below 2 no stratified choice exists."""
    present = counts[counts > 0]
    return min(CV_FOLDS, int(present.min())) if len(present) else 0


def uses_cv(counts: np.ndarray) -> bool:
    return int(counts.sum()) <= SMALL_ROWS and cv_folds(counts) >= 2


def cv_bytes(groups: int, folds: int, n: int, d: int, c: int) -> tuple[int, str]:
    """Bytes of ``cross_validate`` on G sets of n rows and its formula: each fold's gathered rows (fitting n' and
    validation v), their span coordinates and basis (float64 QR) where n' < D, and the solver on all G*k folds."""
    v = -(-n // folds)
    fit_rows = n - v
    span = min(fit_rows, d)
    qr = 64 * fit_rows * d if fit_rows < d else 0
    need = groups * folds * (4 * (fit_rows + v) * (d + span + 2) + qr) + solver_bytes(groups * folds, fit_rows, span, c)
    solver = SOLVER_FORMULA.format(B="Gk", n="n'", d="d'")
    formula = (f"Gk(4(n'+v)(D+d'+2) + 64n'D [n'<D]) + {solver}, "
               f"G={groups}, k={folds}, n'={fit_rows}, v={v}, d'=min(n', D)={span}")
    return need, formula


def limits(shape: Shape, *, val_fraction: float = 0.2) -> dict[str, str]:
    """``linear`` needs a sample to fit and one to validate on, and its solver's memory (``solver_bytes``)."""
    n = shape.n_train
    held = math.ceil(val_fraction * n)
    if held < 1 or n - held < 1:
        return {"linear": f"needs at least 2 training samples (one to fit, one to validate the regularisation on); has {n}"}
    if shape.dim is None:
        return {"linear": ""}
    m, d, c = shape.n_test, shape.dim, shape.num_classes
    need = solver_bytes(1, n, d, c) + 4 * m * (d + c)  # + the test features' normalised copy and their logits
    formula = f"{SOLVER_FORMULA.format(B='', n='N', d='D')} + 4M(D+C) with N={n}, M={m}, D={d}, C={c}"
    if uses_cv(shape.train_counts):  # the folds' sweep, then the refit on all rows (this formula)
        folds_need, folds_formula = cv_bytes(1, cv_folds(shape.train_counts), n, d, c)
        need += folds_need + 8 * n * (d + 1)
        formula = f"8N(D+1) + {folds_formula} + {formula}"
    return {"linear": over_budget(need, formula, shape.device)}


@validated
@threads_by_size(lambda train, test: train.x.numel())
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             val_fraction: float = 0.2, normalise: bool = True, max_iter: int = 500, tol: float = 1e-4,
             matmul_dtype: str = "auto") -> Metrics:
    """``linear``: top-1/top-5 on test of the probe refit with the regularisation chosen by cross-validation
    (small training sets) or on a validation split (``val_fraction``; refit on train+val).

    ``matmul_dtype``: ``auto`` (bfloat16 products where native and N is large), ``float32`` or ``bfloat16``.
    """
    shape = Shape.of(train, test, device)
    reason = limits(shape, val_fraction=val_fraction)["linear"]
    if reason:
        return {"linear": skipped(reason)}
    dev = torch.device(device)
    dtype = product_dtype(len(train), dev) if matmul_dtype == "auto" else getattr(torch, matmul_dtype)
    c = max(train.num_classes, test.num_classes)
    kw = {"max_iter": max_iter, "tol": tol}
    if uses_cv(shape.train_counts):
        w, info, entry = _by_cross_validation(train, c, dev, dtype, seed, normalise, **kw)
    else:
        w, info, entry = _by_split(train, c, dev, dtype, seed, normalise, val_fraction, **kw)
    logits = predict_logits(w[0, 0], prepare(test.x, normalise).to(dev))
    return {"linear": {
        **classification_metrics(logits, test.y, c), **entry,
        "grid": "logspace(-6,2,97)", "search": "coarse-to-fine (CLIP_benchmark)", "normalised": normalise,
        "solver": "L-BFGS", "matmul_dtype": str(dtype).removeprefix("torch."), "max_iter": max_iter, "tol": tol,
        "iterations": int(info["iterations"][0, 0]), "converged": bool(info["converged"][0, 0]),
        "n_test": len(test), "num_classes": c, "seed": seed,
    }}


def _by_split(train: Features, c: int, dev: torch.device, dtype: torch.dtype, seed: int, normalise: bool,
              val_fraction: float, *, max_iter: int, tol: float) -> tuple[torch.Tensor, dict, dict]:
    """The sweep on a validation split, refit on train+val: (W (1, 1, D+1, C), fit info, record fields)."""
    fit_idx, val_idx = stratified_split(train.y, val_fraction, seed)
    n_fit, order = len(fit_idx), torch.cat([fit_idx, val_idx])
    # Rows ordered [fit; val]: the refit set is the whole tensor, the sweep's set a view of its head.
    x = rows_with_bias(train.x, order, normalise).to(dev)[None]
    y = train.y[order].to(dev)[None]
    products = Products.build(x, dtype, transposed_rows=n_fit)

    sweep_problem = Problem.build(x[:, :n_fit], y[:, :n_fit], c, products=products.head(n_fit))
    peak, w_sweep, log = sweep(sweep_problem, x[:, n_fit:, :-1], y[:, n_fit:], max_iter=max_iter, tol=tol)
    lam = float(GRID[peak[0]])

    # The refit's mean from the sweep's and the validation rows' (a pass over a fifth of x instead of all of it);
    # it starts from the sweep's solution, on 25% more data, and the sweep's covariance still preconditions.
    mean = (sweep_problem.mean.double() * n_fit + x[:, n_fit:, :-1].sum(1).double()) / x.shape[1]
    refit = Problem.build(x, y, c, moments=(mean, None), products=products)
    w, info = fit(refit, torch.tensor([[lam]]), w_sweep[:, None], max_iter=max_iter, tol=tol, memory=HISTORY,
                  spectrum=sweep_problem.spectrum)
    return w, info, {
        "regularisation": lam, "C_sklearn": 1.0 / (lam * x.shape[1]), "val_top1": log["val_top1"][0],
        "fits": log["fits"][0], "selection": "validation split", "val_fraction": val_fraction, "refit": "train+val",
        "n_train": n_fit, "n_val": len(val_idx)}


def _by_cross_validation(train: Features, c: int, dev: torch.device, dtype: torch.dtype, seed: int, normalise: bool,
                         *, max_iter: int, tol: float) -> tuple[torch.Tensor, dict, dict]:
    """The sweep scored by stratified k-fold cross-validation, refit on all of train from the folds' mean."""
    folds = cv_folds(np.bincount(train.y.cpu().numpy(), minlength=c))
    x = prepare(train.x, normalise).to(dev)[None]
    y = train.y.to(dev)[None]
    peak, start, log = cross_validate(x, y, c, folds, seed, max_iter=max_iter, tol=tol)
    lam = float(GRID[peak[0]])
    problem = Problem.build(with_bias(x), y, c, dtype)
    w, info = fit(problem, torch.tensor([[lam]]), start[:, None], max_iter=max_iter, tol=tol, memory=HISTORY)
    return w, info, {
        "regularisation": lam, "C_sklearn": 1.0 / (lam * x.shape[1]), "val_top1": log["val_top1"][0],
        "fits": log["fits"][0], "selection": f"stratified {folds}-fold cross-validation", "cv_folds": folds,
        "refit": "train", "n_train": x.shape[1], "n_val": 0}


def cross_validate(x: torch.Tensor, y: torch.Tensor, c: int, folds: int, seed: int, *, max_iter: int, tol: float
                   ) -> tuple[np.ndarray, torch.Tensor, dict]:
    """The coarse-to-fine search scored by stratified ``folds``-fold cross-validation, for G sets at once.

    All G * folds fitting sets are one batch of problems (``stratified_folds`` makes them one size); each
    set's folds share their candidates and are scored together (correct / validated over its folds), so every
    row of a set is validated once. Folds with fewer rows than features are solved in their span (exact).
    Shape: x (G, N, D) prepared features, y (G, N) -> grid index per set (G,), the folds' mean W at it (G, D+1, C)
    (a refit's warm start), log (``fits`` and cross-validated ``val_top1`` per set).
    """
    g, _, d = x.shape
    fit_idx, val_idx = (t.to(x.device) for t in stratified_folds(list(y.cpu().numpy()), folds, seed))
    rows = torch.arange(g, device=x.device).repeat_interleave(folds)[:, None]
    x_fit, y_fit = x[rows, fit_idx], y[rows, fit_idx]
    x_val = x[rows, val_idx.clamp_min(0)]
    y_val = torch.where(val_idx >= 0, y[rows, val_idx.clamp_min(0)], -1)  # -1: padding, never correct
    reduce = fit_idx.shape[1] < d
    if reduce:
        mean, q = span_basis(x_fit)
        x_fit, x_val = to_span(x_fit, mean, q), to_span(x_val, mean, q)
    problem = Problem.build(with_bias(x_fit), y_fit, c, product_dtype(fit_idx.shape[1], x.device))
    peak, w, log = sweep(problem, x_val, y_val, max_iter=max_iter, tol=tol, folds=folds)
    if reduce:
        w = from_span(w, mean, q)
    start = w.view(g, folds, *w.shape[1:]).mean(1)
    return peak[::folds], start, {key: value[::folds] for key, value in log.items()}


def prepare(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    x = x.float()
    return F.normalize(x, dim=-1) if normalise else x


def sweep(p: Problem, val_x: torch.Tensor, val_y: torch.Tensor, *, max_iter: int, tol: float, folds: int = 1
          ) -> tuple[np.ndarray, torch.Tensor, dict]:
    """CLIP_benchmark's coarse-to-fine search of GRID, for B problems at once, by top-1 on their validation sets.

    Shape: val_x (B, M, D) (no bias column), val_y (B, M) (-1: padding) -> (best grid index per problem (B,), its
    W (B, D+1, C), log). ``folds``: consecutive problems in groups of this many are the folds of one
    cross-validation, scored together (correct over validated) and sharing one peak.
    A value already fitted is not refitted. The coarse values start from zero; each later one from ``_start``.
    Ties keep the first value in the order tried, as CLIP_benchmark's find_peak.
    """
    b = val_x.shape[0]
    fitted: list[dict[int, tuple[float, torch.Tensor]]] = [{} for _ in range(b)]
    counts = (val_y >= 0).sum(-1).double().cpu()

    def score(i: int, idx: int) -> float:
        if folds == 1:
            return fitted[i][idx][0]
        group = range(i - i % folds, i - i % folds + folds)
        return sum(fitted[j][idx][0] * float(counts[j]) for j in group) / float(counts[group.start:group.stop].sum())

    def run(cands: list[list[int]], starts: torch.Tensor | None = None, lam0: torch.Tensor | None = None) -> None:
        lam = torch.tensor([[GRID[i] for i in row] for row in cands], dtype=torch.float32)
        w, _ = fit(p, lam, starts, max_iter=max_iter, tol=tol, lam0=lam0, memory=HISTORY)
        acc = _val_top1(predict_logits(w, val_x[:, None]), val_y).cpu()  # (B, L)
        for i, row in enumerate(cands):
            for j, idx in enumerate(row):
                fitted[i].setdefault(idx, (float(acc[i, j]), w[i, j]))

    def first_best(i: int, order: list[int]) -> int:
        best = order[0]
        for idx in order[1:]:
            if score(i, idx) > score(i, best):
                best = idx
        return best

    run([list(COARSE)] * b)
    peak = [first_best(i, list(COARSE)) for i in range(b)]
    for span in SPANS:
        orders = [[max(pk - span, 0), pk, min(pk + span, len(GRID) - 1)] for pk in peak]
        new = [[idx for idx in order if idx not in fitted[i]] for i, order in enumerate(orders)]
        width = max(len(row) for row in new)
        if width:
            cands = [(row + [peak[i]] * width)[:width] if row else [peak[i]] * width for i, row in enumerate(new)]
            pairs = [[_start(fitted[i], idx) for idx in row] for i, row in enumerate(cands)]
            starts = torch.stack([torch.stack([w for w, _ in row]) for row in pairs])
            run(cands, starts, torch.tensor([[lam0 for _, lam0 in row] for row in pairs], dtype=torch.float32))
        peak = [first_best(i, order) for i, order in enumerate(orders)]
    best_w = torch.stack([fitted[i][peak[i]][1] for i in range(b)])
    log = {"fits": [len(f) for f in fitted], "val_top1": [score(i, peak[i]) for i in range(b)]}
    return np.array(peak), best_w, log


def _start(fitted: dict[int, tuple[float, torch.Tensor]], idx: int) -> tuple[torch.Tensor, float]:
    """Warm start (W, lambda it was solved for) of grid value ``idx`` from the values fitted so far.

    Inside the fitted range: W interpolated in log lambda through the nearest fitted values on either side,
    which CLIP_benchmark's search always has (the candidate p +- s lies between p and p +- 2s), and the next
    nearest fitted value where there is one: a quadratic through the three. At lambda ~1e-6 the tolerance cannot
    tell neighbours apart (an unmoved neighbour meets it at once with an objective 10% too high), so the start
    must already be close. At the grid's edge: the nearer side's solution, moved by ``fit``'s predictor.
    """
    if idx in fitted:
        return fitted[idx][1], float(GRID[idx])
    below = max((j for j in fitted if j < idx), default=None)
    above = min((j for j in fitted if j > idx), default=None)
    if below is None or above is None:
        side = below if above is None else above
        return fitted[side][1], float(GRID[side])
    nodes = [below, above]
    others = sorted((j for j in fitted if j not in nodes), key=lambda j: abs(j - idx))
    nodes += others[:1]
    start = torch.zeros_like(fitted[below][1])
    for j in nodes:  # Lagrange weights on the grid index, which is uniform in log lambda
        weight = math.prod((idx - k) / (j - k) for k in nodes if k != j)
        start.add_(fitted[j][1], alpha=weight)
    return start, float(GRID[idx])


def _val_top1(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 over the labelled rows (y >= 0). Shape: logits (B, L, M, C), y (B, M) -> (B, L)."""
    hits = (logits.argmax(-1) == y[:, None]).float()
    return hits.mean(-1) if bool((y >= 0).all()) else hits.sum(-1) / (y >= 0).sum(-1, keepdim=True).clamp_min(1)
