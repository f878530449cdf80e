"""Linear probe on frozen features: L2-regularised multinomial logistic regression.

The recipe of the CLIP paper (App. A.3) and CLIP_benchmark's ``linear_probe.py``: cached features,
L2-normalised as CLIP_benchmark's featurizer, no augmentation; the regularisation swept over
``logspace(-6, 2, 97)`` by CLIP_benchmark's coarse-to-fine search (7 coarse values, then +-8, 4, 2, 1 grid
steps around the peak) on a validation split carved from train; the chosen value refit on train+val and
scored once on test. The solver (protocols/solvers/) fits many values at once and warm-starts each later
value from the ones already fitted, so only the 7 coarse values are solved from zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.splits import stratified_split
from protocols.base import Features, Metrics, classification_metrics, threads_by_size, validated
from protocols.limits import Shape, over_budget, skipped
from protocols.solvers.lbfgs import fit
from protocols.solvers.logreg import Problem, predict_logits, rows_with_bias
from protocols.solvers.products import Products, product_dtype

GRID = np.logspace(-6, 2, 97)
COARSE = tuple(range(0, 97, 16))  # CLIP_benchmark's np.logspace(-6, 2, 7) inside the 97-point grid
SPANS = (8, 4, 2, 1)
HISTORY = 60  # L-BFGS pairs kept per model (``fit``'s memory)


# What the solver allocates for B problems of n rows of d features and C classes, in bytes: the d x d
# preconditioner (scatter, its eigendecomposition with LAPACK's workspace, the rotation; float64 and float32), x
# with its bias column (float32, bfloat16 and transposed copies, the centred rows of the scatter), the L-BFGS pairs
# and iterates of the 7 coarse lambdas solved together, and their logits and residuals. Measured resident peaks
# are 25-70% of it (tests/test_faults_protocols.py).
SOLVER_FORMULA = "{B}(48({d}+1)^2 + 12{n}({d}+1) + 3640C({d}+1) + 112C{n})"


def solver_bytes(b: int, n: int, d: int, c: int) -> int:
    lams = len(COARSE)
    return b * (48 * (d + 1) ** 2 + 12 * n * (d + 1) + 4 * lams * (2 * HISTORY + 10) * (d + 1) * c + 16 * lams * c * n)


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
    return {"linear": over_budget(need, formula, shape.device)}


@validated
@threads_by_size(lambda train, test: train.x.numel())
def evaluate(train: Features, test: Features, *, seed: int = 0, device: str | torch.device = "cpu",
             val_fraction: float = 0.2, normalise: bool = True, max_iter: int = 500, tol: float = 1e-4,
             matmul_dtype: str = "auto") -> Metrics:
    """``linear``: top-1/top-5 on test of the probe refit on train+val with the regularisation chosen on val.

    ``matmul_dtype``: ``auto`` (bfloat16 products where native and N is large), ``float32`` or ``bfloat16``.
    """
    reason = limits(Shape.of(train, test, device), val_fraction=val_fraction)["linear"]
    if reason:
        return {"linear": skipped(reason)}
    dev = torch.device(device)
    dtype = product_dtype(len(train), dev) if matmul_dtype == "auto" else getattr(torch, matmul_dtype)
    c = max(train.num_classes, test.num_classes)
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

    logits = predict_logits(w[0, 0], prepare(test.x, normalise).to(dev))
    return {"linear": {
        **classification_metrics(logits, test.y, c),
        "regularisation": lam, "C_sklearn": 1.0 / (lam * x.shape[1]), "val_top1": log["val_top1"][0],
        "grid": "logspace(-6,2,97)", "search": "coarse-to-fine (CLIP_benchmark)", "fits": log["fits"][0],
        "val_fraction": val_fraction, "refit": "train+val", "normalised": normalise, "solver": "L-BFGS",
        "matmul_dtype": str(dtype).removeprefix("torch."), "max_iter": max_iter, "tol": tol,
        "iterations": int(info["iterations"][0, 0]), "converged": bool(info["converged"][0, 0]),
        "n_train": n_fit, "n_val": len(val_idx), "n_test": len(test), "num_classes": c, "seed": seed,
    }}


def prepare(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    x = x.float()
    return F.normalize(x, dim=-1) if normalise else x


def sweep(p: Problem, val_x: torch.Tensor, val_y: torch.Tensor, *, max_iter: int, tol: float
          ) -> tuple[np.ndarray, torch.Tensor, dict]:
    """CLIP_benchmark's coarse-to-fine search of GRID, for B problems at once, by top-1 on their validation sets.

    Shape: val_x (B, M, D) (no bias column), val_y (B, M) -> (best grid index per problem (B,), its W (B, D+1, C), log).
    A value already fitted is not refitted. The coarse values start from zero; each later one from ``_start``.
    Ties keep the first value in the order tried, as CLIP_benchmark's find_peak.
    """
    b = val_x.shape[0]
    fitted: list[dict[int, tuple[float, torch.Tensor]]] = [{} for _ in range(b)]

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
            if fitted[i][idx][0] > fitted[i][best][0]:
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
    log = {"fits": [len(f) for f in fitted], "val_top1": [fitted[i][peak[i]][0] for i in range(b)]}
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
    """Shape: logits (B, L, M, C), y (B, M) -> (B, L)."""
    return (logits.argmax(-1) == y[:, None]).float().mean(-1)
