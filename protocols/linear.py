"""Linear probe on frozen features: L2-regularised multinomial logistic regression.

The default follows the CLIP paper (App. A.3) and CLIP_benchmark: cached features (L2-normalised, as
CLIP_benchmark's featurizer), no augmentation, the regularisation swept over ``logspace(-6, 2, 97)``
with CLIP_benchmark's coarse-to-fine search (7 coarse values, then +-8, 4, 2, 1 grid steps around
the peak) on a validation split carved from train, then refit on train+val and scored once on test.

Each fit minimises ``mean CE(xW + b, y) + lambda / 2 * ||W||^2`` (bias unpenalised; scikit-learn's
C = 1 / (lambda * N)) to a gradient tolerance with L-BFGS, solved for many lambdas, and many
problems of equal size (few-shot draws), at once: one batched matrix product per step serves all of
them. The variables are preconditioned by the Gauss-Newton curvature at zero plus lambda (the features'
covariance / C, from one eigendecomposition per problem, so every lambda costs only a scaling), which
makes raw pixel features as easy as whitened ones. Every fine-search value starts from the log-lambda
interpolation of the fitted values around it (``_start``), the refit from the sweep's solution, so only
the 7 coarse values are solved from zero. Where bfloat16 products are native and N is
large, the two products of a step read bfloat16 copies of x, each laid out for its product (see ``Problem``,
``dithered_bf16``).

Time (2 threads, Fashion-MNIST raw pixels, 48k fit / 12k val / refit on 60k; results/benchmarks/protocol-runs.md):
the whole protocol in 1.82-2.62 s (each run's mean of 5 calls; single calls 1.76-2.75 s) over five runs against
26.2-30.2 s for one fit of scikit-learn's LogisticRegression(lbfgs, C=1, max_iter=200), ratio 0.069-0.087 (median
0.077; 0.085-0.096 in five runs an hour earlier, on a slower host), at 84.86% against 84.46% test top-1. Set-up
(split, copies, moments, eigh) takes ~0.4 s of that. A step on 48k rows costs ~17-20 ms, ~9-11 of them the two
bfloat16 products (DRAM-bound on the two 75 MB copies), and an exact float32 product ~14 ms. Over split seeds 0-4
and three dither seeds a run takes 75 L-BFGS steps on average, and about two thirds are the coarse fit. There the
smallest value, lambda = 1e-6, is a nearly separable problem with a slow tail: its gradient's max-norm hovers
around the tolerance while the objective still falls, so round-off decides when it stops. Tried for that tail
and dropped:
- Kronecker factors eigen-corrected at the solution: 61 steps instead of 70, for 0.5 s of set-up.
- Sub-sampled Newton-CG: 4x fewer passes over x, but 300-450 CG steps.
- Continuation over growing subsets: a sixth fewer passes.
- The two smallest coarse values solved one after another from extrapolated starts: fewer steps each, but they
  no longer share the passes, so slower.
- A Newton line search along each direction: no fewer steps.
- The compact L-BFGS form: no faster than the two-loop here.
- oneDNN's prepacked layouts: 2 ms a product while x sits in L3, ~5.5 ms from DRAM, so no faster in the loop.
- L-BFGS memory carried between fits: no faster. The sweep's pairs for its lambda carried into the refit: the
  chosen value's fit usually took no step (so had no pairs), and where it had some the refit took 11 steps, not 8.
- 8k rows for the preconditioner (more steps), and 24k or all 48k (no fewer).
- Transparent huge pages for the set-up copies: faster alone, but 2-3x slower right after other buffers were freed.

``linear_probe_paper`` is the other protocol: SGD through the frozen backbone with augmentation,
following MoCo's ``main_lincls.py`` and MAE's ``main_linprobe.py``; it needs a model and images,
so it is not part of the default feature-only evaluation.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protocols.base import PROTOCOLS, Features, Metrics
from protocols.features import native_bf16, resolve_device, threads_by_size, threads_for

GRID = np.logspace(-6, 2, 97)
COARSE = tuple(range(0, 97, 16))  # CLIP_benchmark's np.logspace(-6, 2, 7) inside the 97-point grid
SPANS = (8, 4, 2, 1)
BF16_MIN_ROWS = 16384
PRECOND_ROWS = 16384  # rows that estimate the preconditioner's matrices (the objective always uses all)
FORWARD_BLOCKS = 2  # row blocks of x in the bfloat16 forward product on a CPU (see ``Problem``)
BLOCK_ROWS = 32  # rows of a forward block: a multiple of this (see ``Problem``)


# --------------------------------------------------------------------------- the batched solver


@dataclass
class Problem:
    """B equally sized training sets with their preconditioner.

    Shape: x (B, N, D+1) float32 features with a last column of ones (the bias); fast (B, N, D+1) the same
    in bfloat16 for the forward product x W', or None to multiply with x in float32; fast_t (B, D', n) the
    transpose of its first n <= N rows, zero-padded to an even D' >= D+1, for the backward product x' R on a
    CPU (the other rows, or all where None, as R x with ``fast``); y (B, N); mean (B, D) the feature mean;
    dither (N,) for ``dithered_bf16`` (None without ``fast``); spectrum the eigenvalues (B, D) and
    eigenvectors (B, D, D) of the features' covariance (float64; ``precondition``), or None where every fit
    is given one.

    Why two copies (measured on 48k x 785, 2 threads, one model): oneDNN's bfloat16 products on these skinny
    shapes split their work badly over the threads. Giving each thread its own batch entry (row blocks of x
    forward, the two halves of x' backward) took the forward from ~7.7 to ~5-6 ms and the backward from
    ~10-11 to ~5 ms; a transposed operand instead of a copy runs 2-9x slower. A row block whose row count is
    not a multiple of 32 took twice as long (60k rows as 2 x 30000: ~9.5 ms; 2 x 29984: ~5.5 ms), hence blocks
    of a multiple of BLOCK_ROWS rows and the last few rows in a product of their own.
    """

    x: torch.Tensor
    fast: torch.Tensor | None
    y: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    spectrum: tuple[torch.Tensor, torch.Tensor] | None
    dither: torch.Tensor | None  # (N,) int32 in [0, 2^16): see ``dithered_bf16``
    fast_t: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.fast is None else self.fast.dtype

    def times_x_t(self, a: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """a @ x' in float32; a rounded to the product dtype unless ``exact`` (then a float32 product with x).
        Shape: a (B, K, D+1) -> (B, K, N) contiguous."""
        if exact or self.fast is None:
            return a @ self.x.transpose(1, 2)
        b, n, d1 = self.fast.shape
        wt = a.to(self.fast.dtype).transpose(1, 2)
        out = torch.empty(b, a.shape[1], n, device=a.device)
        if self.fast.device.type != "cpu":
            return out.copy_((self.fast @ wt).transpose(1, 2))
        rows = n // (FORWARD_BLOCKS * BLOCK_ROWS) * BLOCK_ROWS  # per row block; the last n - head rows apart
        head = FORWARD_BLOCKS * rows
        for i in range(b):  # each problem's row blocks as the batch entries of one product: a view, never a copy
            if rows:
                blocks = self.fast[i, :head].view(FORWARD_BLOCKS, rows, d1) @ wt[i].expand(FORWARD_BLOCKS, d1, -1)
                out[i, :, :head].copy_(blocks.view(head, -1).t())
            if head < n:
                out[i, :, head:].copy_((self.fast[i, head:] @ wt[i]).t())
        return out

    def residual_times_x(self, r: torch.Tensor) -> torch.Tensor:
        """x' r' in float32, r rounded by ``dithered_bf16`` for a bfloat16 product. Shape: r (B, K, N) -> (B, D+1, K)."""
        if self.fast is None:
            return (r @ self.x).transpose(1, 2)
        low = dithered_bf16(r, self.dither)
        n = 0 if self.fast_t is None else self.fast_t.shape[2]  # rows with a transposed copy: the first n
        parts = []
        if n:
            b, dp = self.fast_t.shape[:2]
            rt = low[..., :n].transpose(1, 2).contiguous()  # (B, n, K)
            rt = rt.expand(2, *rt.shape[1:]) if b == 1 else rt.repeat_interleave(2, 0)
            halves = self.fast_t.view(b * 2, dp // 2, n) @ rt  # (2B, D'/2, K)
            parts.append(halves.view(b, dp, -1)[:, :self.x.shape[2]].float())
        if n < r.shape[-1]:
            parts.append((low[..., n:] @ self.fast[:, n:]).float().transpose(1, 2))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32,
              moments: tuple[torch.Tensor, torch.Tensor | None] | None = None,
              fast: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> Problem:
        """Shape: x (B, N, D+1) from ``with_bias``, y (B, N); ``moments`` = centred_moments(x) (the scatter
        None: no spectrum) and ``fast`` = low_precision(x, dtype) when the caller has them already."""
        if fast is None:
            fast = low_precision(x, dtype)
        mean, scatter = moments if moments is not None else centred_moments(x[..., :-1])
        spectrum = None
        if scatter is not None:
            # float32 (1.6x faster than float64 here): its round-off ~1e-7 of the largest variance is far below
            # lambda * C, and the rotation only has to be close to orthogonal.
            vals, vecs = torch.linalg.eigh((scatter / x.shape[1]).float())
            spectrum = (vals.double().clamp_min(0.0), vecs.double())  # round-off can leave a zero-variance direction at -eps
        dither = None
        if fast[0] is not None:
            # Drawn once per problem, from its own seeded generator: fits are reproducible.
            gen = torch.Generator().manual_seed(0)
            dither = torch.randint(0, 1 << 16, (x.shape[1],), dtype=torch.int32, generator=gen).to(x.device)
        return cls(x, fast[0], y, num_classes, mean.float(), spectrum, dither, fast[1])


def low_precision(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``Problem``'s (fast, fast_t) for x (B, N, D+1): (None, None) in float32; fast_t only on a CPU."""
    if dtype == torch.float32:
        return None, None
    fast = x.to(dtype)
    return fast, transposed(fast) if x.device.type == "cpu" else None


def transposed(fast: torch.Tensor) -> torch.Tensor:
    """Shape: (B, N, D+1) -> (B, D', N) contiguous, D' = D+1 rounded up to even (a zero row added).
    One 2-D copy per problem: torch's blocked transpose serves only 2-D copies (measured, 48k x 785 bfloat16:
    ~90 ms against ~125 ms for one strided 3-D copy)."""
    b, n, d1 = fast.shape
    out = fast.new_empty((b, d1 + d1 % 2, n))
    out[:, d1:].zero_()
    for i in range(b):
        out[i, :d1].copy_(fast[i].t())
    return out


def with_bias(x: torch.Tensor) -> torch.Tensor:
    """Shape: (..., N, D) -> (..., N, D+1) float32 with a last column of ones."""
    return torch.cat([x.float(), x.new_ones(*x.shape[:-1], 1, dtype=torch.float32)], -1)


def centred_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (float64; summed in float32, pairwise) and scatter sum (x - mean)'(x - mean), estimated from at
    most PRECOND_ROWS evenly spaced rows (it only shapes the preconditioner). The product is float32: a
    bfloat16 product rounds each entry, and on raw pixels the matrix was no longer positive semi-definite.
    Shape: x (B, N, D) -> (B, D), (B, D, D) float64.
    """
    n = x.shape[1]
    mean = x.float().mean(1).double()
    xc = x[:, ::max(1, -(-n // PRECOND_ROWS))] - mean[:, None].float()
    return mean, (xc.transpose(1, 2) @ xc).double() * (n / max(1, xc.shape[1]))


def _softmax_ce(z: torch.Tensor, yi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy per model, and the pieces of the softmax to reuse for the gradient.

    Shape: z (B, L, C, N) logits, yi (B, L, 1, N) labels -> ce (B, L) float64, e (B, L, C, N), s (B, L, 1, N).
    The (C, N) layout keeps every reduction over classes a sum of contiguous rows.
    """
    zmax = z.amax(2, keepdim=True)
    e = (z - zmax).exp_()
    s = e.sum(2, keepdim=True)
    ce = (s.log().add_(zmax) - z.gather(2, yi)).sum((2, 3), dtype=torch.float64)
    return ce, e, s


def dithered_bf16(r: torch.Tensor, dither: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16, rounding each magnitude up with probability equal to the dropped fraction.

    The residuals of the backward product are rounded so (only with a bfloat16 copy of x, for N >=
    BF16_MIN_ROWS): round-to-nearest would bias the gradient wherever residuals are alike across samples
    (early in a fit, under strong regularisation), while these errors, with a fixed uniform dither per
    sample, are independent across samples and average out over N rows, as x's own rounding does
    (~2^-9 |r| |x| / sqrt(N) per entry: ~1e-8 at N = 48k, tolerance 1e-4).
    Adding a uniform integer in [0, 2^16) to the float's bit pattern and clearing the low 16 bits is
    stochastic rounding of the magnitude (the sign bit is untouched for finite values); the result is
    exact in bfloat16. Shape: r (..., N) float32, dither (N,) int32 in [0, 2^16) -> (..., N) bfloat16.
    """
    bits = (r.contiguous().view(torch.int32) + dither).bitwise_and_(-65536)
    return bits.view(torch.float32).to(torch.bfloat16)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((2, 3))


class _State:
    """The models still being optimised: every tensor has the model batch (B, L) in front."""

    # A field still None (the preconditioner and the variables in u, before a model needs a step) stays None.
    FIELDS = ("lam", "tol", "scale", "u", "w", "z", "g", "gw", "f", "sq", "stalled")

    def __init__(self, **tensors):
        self.__dict__.update(tensors)
        self.hist: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def keep(self, cols: torch.Tensor) -> None:
        for name in self.FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[:, cols])
        self.hist = [(s[:, cols], y[:, cols], r[:, cols]) for s, y, r in self.hist]


def fit(p: Problem, lam: torch.Tensor, w0: torch.Tensor | None = None, *, max_iter: int = 500,
        tol: float | torch.Tensor = 1e-4, memory: int = 60,
        spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
        lam0: torch.Tensor | None = None, refresh_every: int = 20) -> tuple[torch.Tensor, dict]:
    b, n, d1 = p.x.shape
    with threads_for(b * n * max(d1, lam.shape[1] * p.num_classes), p.x.device):
        return _fit(p, lam, w0, max_iter=max_iter, tol=tol, memory=memory, spectrum=spectrum, lam0=lam0,
                    refresh_every=refresh_every)


def precondition(spectrum: tuple[torch.Tensor, torch.Tensor], lam: torch.Tensor, num_classes: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, scale) with F = R diag(scale) and F F' = (G / C + lam * [W rows])^-1: the change of variables W = F u of ``fit``.

    G = blockdiag(cov(x), 1) is the second moment of the centred features [x - mean, 1], and G / C the
    Gauss-Newton curvature of the cross-entropy at W = 0 (the softmax's Hessian there is I/C - 11'/C^2:
    1/C in every direction but the redundant one).
    From cov = V diag(s) V': R = blockdiag(V, 1), shared by every lambda, and scale = [(s / C + lam)^-1/2, sqrt(C)].
    Shape: spectrum ((B, D), (B, D, D)), lam (B, L) -> R (B, D+1, D+1), scale (B, L, D+1, 1), float32.
    """
    vals, vecs = spectrum
    b, d = vals.shape
    c = float(num_classes)
    lam = lam.to(vals.device, torch.float64)
    rot = vecs.new_zeros(b, d + 1, d + 1, dtype=torch.float32)
    rot[:, :d, :d] = vecs
    rot[:, d, d] = 1.0
    scale = torch.cat([(vals[:, None] / c + lam[..., None]).rsqrt(), lam.new_full((*lam.shape, 1), c ** 0.5)], -1)
    return rot, scale.float()[..., None]


def _rotate(rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """R t for every model in one product; R' t takes a contiguous R' (a transposed view doubled the product's
    time). Shape: rot (B, D+1, D+1), t (B, L, D+1, C) -> (B, L, D+1, C)."""
    b, live, d1, c = t.shape
    out = rot @ t.transpose(1, 2).reshape(b, d1, live * c)
    return out.view(b, d1, live, c).transpose(1, 2)


def _fit(p: Problem, lam: torch.Tensor, w0: torch.Tensor | None, *, max_iter: int, tol, memory: int,
         spectrum, lam0, refresh_every: int) -> tuple[torch.Tensor, dict]:
    """Minimise mean CE + lam/2 ||W||^2 for every (problem, lambda) with L-BFGS, each model stopping on its own.

    The weights are parametrised around the feature mean (logits (x - mean) W + b', the same model with
    b = b' - mean W), so the bias decouples from W, and preconditioned: theta = F u with F from
    ``precondition`` (``spectrum``, by default ``p.spectrum``; a problem without one needs it given). The
    Hessian in u starts at the identity, so the unit step is the natural first try (Armijo backtracking
    per model). F is made only once a model needs a step (a warm start often meets the tolerance at once).
    Logits move along the search line as z + t * (x d), so a trial step costs no product with x; they are
    recomputed exactly in float32 every ``refresh_every`` steps (20: over 15 runs of the protocol, 2 fewer
    steps and 2.7 fewer exact products a run than with 10; 30 took more steps) and before a model is declared converged
    (max |dF/dW| <= tol on W and bias; ``tol`` a number or one per model (B, L)).
    ``w0`` solved for ``lam0`` is first moved along the solution path, W - (lam - lam0) H^-1 [W; 0] with
    H^-1 ~ F F' (a Newton predictor): the start then differs from the neighbour's solution by what the
    change of lambda asks, even where the neighbour already meets the tolerance.
    Shape: lam (B, L), w0 (B, L, D+1, C) or None (data-space weights, last row the bias) -> same.
    """
    b, n, d1 = p.x.shape
    c = p.num_classes
    dev = p.x.device
    lam = lam.to(dev, torch.float32)
    n_models = lam.shape[1]
    yi = p.y[:, None, None, :].expand(b, n_models, 1, n)
    mean = p.mean[:, None, None, :]  # (B, 1, 1, D)
    spectrum = p.spectrum if spectrum is None else spectrum

    def to_data(t):  # centred (W, b') -> data-space (W, b' - mean W)
        return torch.cat([t[:, :, :-1], t[:, :, -1:] - mean @ t[:, :, :-1]], 2)

    def from_data_grad(g):  # gradient wrt data-space weights -> wrt centred ones
        return torch.cat([g[:, :, :-1] - mean.transpose(2, 3) * g[:, :, -1:], g[:, :, -1:]], 2)

    if w0 is None:
        w = torch.zeros(b, n_models, d1, c, device=dev)
    else:
        w0 = w0.to(dev, torch.float32).expand(b, n_models, d1, c)
        w = torch.cat([w0[:, :, :-1], w0[:, :, -1:] + mean @ w0[:, :, :-1]], 2)
    tol = torch.as_tensor(tol, dtype=torch.float32, device=dev).expand(b, n_models).clone()
    st = _State(lam=lam, tol=tol, scale=None, u=None, w=w, z=None, g=None, gw=None,
                f=None, sq=None, stalled=torch.zeros(b, n_models, dtype=torch.bool, device=dev))
    rot = rot_t = None  # R of F = R diag(scale), shared by all models, and R'

    def variables(st: _State) -> None:  # F for the live models, and the weights and gradient in u
        nonlocal rot, rot_t
        rot, st.scale = precondition(spectrum, st.lam, c)
        rot_t = rot.transpose(1, 2).contiguous()
        st.u = _rotate(rot_t, st.w) / st.scale
        if st.gw is not None:
            st.g = st.scale * _rotate(rot_t, st.gw)

    if w0 is not None and lam0 is not None and bool((lam0.to(dev) != lam).any()):
        variables(st)
        penalty_grad = torch.cat([w[:, :, :-1], torch.zeros_like(w[:, :, -1:])], 2)
        st.u = st.u - (lam - lam0.to(dev, torch.float32))[..., None, None] * st.scale * _rotate(rot_t, penalty_grad)
        st.w = w = _rotate(rot, st.scale * st.u)
    out_w = w.clone()
    info = {"iterations": torch.zeros(b, n_models, dtype=torch.long), "grad_max": torch.zeros(b, n_models),
            "objective": torch.zeros(b, n_models, dtype=torch.float64),
            "stalled": torch.zeros(b, n_models, dtype=torch.bool)}
    cols = torch.arange(n_models)  # which of the caller's models each live column is

    def products(weights, exact: bool = False):  # (B, L, D+1, C) -> logits (B, L, C, N)
        live = weights.shape[1]
        return p.times_x_t(weights.transpose(2, 3).reshape(b, live * c, d1), exact).view(b, live, c, n)

    def gradient(st: _State, ce, e, s, sel: torch.Tensor | None = None) -> None:
        """Objective and gradient of the live models from their softmax pieces; with ``sel`` (L,) bool,
        of the selected models only, written into their places."""
        w, lam = (st.w, st.lam) if sel is None else (st.w[:, sel], st.lam[:, sel])
        live = w.shape[1]
        r = e.div_(s).scatter_add_(2, yi[:, :live], e.new_full((1, 1, 1, 1), -1.0).expand(b, live, 1, n))
        gw = p.residual_times_x(r.view(b, live * c, n)).view(b, d1, live, c).permute(0, 2, 1, 3) / n
        gw = from_data_grad(gw)
        sq = w[:, :, :-1].pow(2).sum((2, 3))
        gw[:, :, :-1] += lam[..., None, None] * w[:, :, :-1]
        f = ce / n + 0.5 * lam.double() * sq.double()
        g = None
        if st.scale is not None:
            g = (st.scale if sel is None else st.scale[:, sel]) * _rotate(rot_t, gw)
        if sel is None:
            st.gw, st.sq, st.f, st.g = gw, sq, f, g
            return
        st.gw[:, sel], st.sq[:, sel], st.f[:, sel] = gw, sq, f
        if g is not None:
            st.g[:, sel] = g

    def exact(st: _State, sel: torch.Tensor | None = None) -> None:
        """Logits from the float32 product, for all live models or the ``sel`` ones (L,) bool."""
        if sel is None:
            st.z = products(to_data(st.w), exact=True)
            gradient(st, *_softmax_ce(st.z, yi[:, : st.w.shape[1]]))
            return
        z = products(to_data(st.w[:, sel]), exact=True)
        st.z[:, sel] = z
        gradient(st, *_softmax_ce(z, yi[:, : z.shape[1]]), sel=sel)

    if w0 is None:  # zero weights, zero logits: no product needed
        st.z = p.x.new_zeros(b, n_models, c, n)
        gradient(st, *_softmax_ce(st.z, yi))
    else:
        exact(st)
    since_exact = 0
    for it in range(1, max_iter + 2):
        grad_max = st.gw.abs().amax((2, 3))
        small = grad_max <= st.tol
        if small.any() and since_exact:
            exact(st, small.any(0))  # confirm with exact logits before stopping anyone (only those)
            grad_max = st.gw.abs().amax((2, 3))
            small = grad_max <= st.tol
        done = (small | st.stalled).all(0)  # a column leaves once finished in every problem
        if it > max_iter:
            done[:] = True
        if done.any():
            _record(out_w, info, st, cols, done, grad_max, it - 1)
            if done.all():
                break
            st.keep(~done)
            cols = cols[~done.cpu()]  # cols stays on the CPU beside ``info``; ``done`` lives on the device
        if st.scale is None:
            variables(st)
        live = st.w.shape[1]
        direction = _two_loop(st)
        dw = _rotate(rot, st.scale * direction)
        xd = products(to_data(dw))
        slope = _dot(st.g, direction).double()
        wd = (st.w[:, :, :-1] * dw[:, :, :-1]).sum((2, 3)).double()
        dd = dw[:, :, :-1].pow(2).sum((2, 3)).double()
        step = torch.ones_like(slope)
        for _ in range(40):
            z_try = torch.addcmul(st.z, step.float()[..., None, None], xd)
            ce, e, s = _softmax_ce(z_try, yi[:, :live])
            f_try = ce / n + 0.5 * st.lam.double() * (st.sq.double() + 2 * step * wd + step * step * dd)
            ok = f_try <= st.f + 1e-4 * step * slope
            if ok.all():
                break
            step = torch.where(ok, step, step * 0.5)
        # No decrease even for a tiny step (or not a descent direction): float32 round-off has the last word.
        st.stalled |= ~ok | (slope >= 0)
        step = torch.where(st.stalled, 0.0, step).float()[..., None, None]
        g_old, u_old = st.g, st.u
        st.u = st.u + step * direction
        st.w = st.w + step * dw
        if st.stalled.any():
            z_try = st.z + step * xd
            ce, e, s = _softmax_ce(z_try, yi[:, :live])
        st.z = z_try
        since_exact += 1
        if since_exact >= refresh_every:  # the exact logits' gradient, instead of (not after) the line search's
            exact(st)
            since_exact = 0
        else:
            gradient(st, ce, e, s)
        s_vec, y_vec = st.u - u_old, st.g - g_old
        sy = _dot(s_vec, y_vec)
        rho = torch.where(sy > 1e-10 * _dot(s_vec, s_vec).sqrt() * _dot(y_vec, y_vec).sqrt(),
                          1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        st.hist = (st.hist + [(s_vec, y_vec, rho)])[-memory:]
    info["converged"] = info["grad_max"] <= tol.cpu()
    return to_data(out_w), info


def _record(out_w, info, st: _State, cols, done, grad_max, iterations) -> None:
    idx = cols[done.cpu()]
    out_w[:, idx.to(out_w.device)] = st.w[:, done]
    info["iterations"][:, idx] = iterations
    info["grad_max"][:, idx] = grad_max[:, done].cpu()
    info["objective"][:, idx] = st.f[:, done].cpu()
    info["stalled"][:, idx] = st.stalled[:, done].cpu()


def _two_loop(st: _State) -> torch.Tensor:
    """L-BFGS direction -H g from the stored pairs (a pair with rho = 0 is skipped for that model)."""
    q = st.g.clone()
    alphas = []
    for s_, y_, rho in reversed(st.hist):
        a = rho * _dot(s_, q)
        q -= a[..., None, None] * y_
        alphas.append(a)
    if st.hist:
        s_, y_, rho = st.hist[-1]
        gamma = torch.where(rho > 0, _dot(s_, y_) / _dot(y_, y_).clamp_min(1e-30), torch.ones_like(rho))
        q *= gamma[..., None, None]
    for (s_, y_, rho), a in zip(st.hist, reversed(alphas), strict=True):
        q += (a - rho * _dot(y_, q))[..., None, None] * s_
    return -q


def span_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and an orthonormal basis Q of the span of the centred rows, for problems with fewer samples than features.

    The penalised weights of the optimum lie in that span (the gradient in W is (x - mean)' R + lam W), and
    ||Q A|| = ||A||, so fitting on the coordinates (x - mean) Q and mapping back with ``from_span`` solves the
    original problem exactly, with an N x N curvature instead of D x D (few-shot on 784 raw pixels: the
    785 x 785 factorisations were most of the protocol's time).
    Shape: x (B, N, D) -> mean (B, 1, D), Q (B, D, N).
    """
    mean = x.float().mean(1, keepdim=True)
    q, _ = torch.linalg.qr((x.float() - mean).transpose(1, 2).double())
    return mean, q.float()


def to_span(x: torch.Tensor, mean: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Shape: x (B, M, D) -> (B, M, N) coordinates in the basis of ``span_basis``."""
    return (x.float() - mean) @ q


def from_span(w: torch.Tensor, mean: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Weights fitted on span coordinates -> data-space weights. Shape: w (B, N+1, C) -> (B, D+1, C)."""
    weights = q @ w[:, :-1]
    return torch.cat([weights, w[:, -1:] - mean @ weights], 1)


def predict_logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape: w (..., D+1, C) (last row the bias), x (..., M, D) -> (..., M, C), batch dimensions broadcast."""
    if w.dim() == 4 and x.dim() == 4 and x.shape[1] == 1 < w.shape[1]:
        # L models on one set: one product with their weights side by side (matmul's broadcast copied x L times).
        b, live, d1, c = w.shape
        side = w[:, :, :-1].permute(0, 2, 1, 3).reshape(b, d1 - 1, live * c)
        return (x[:, 0].float() @ side).view(b, -1, live, c).permute(0, 2, 1, 3) + w[:, :, None, -1]
    return x.float() @ w[..., :-1, :] + w[..., -1:, :]



# --------------------------------------------------------------------------- the protocol


def product_dtype(n: int, device: torch.device) -> torch.dtype:
    """bfloat16 for the products with x when it is native here (CUDA, or a CPU with AMX or AVX512-BF16)
    and the sample is large: the gradient then carries rounding error ~ 2^-9 |x| |r| / sqrt(N)
    (measured: ~1e-4 with 24 samples, ~1e-6 with 48k), far below the tolerance only for large N.
    """
    return torch.bfloat16 if n >= BF16_MIN_ROWS and native_bf16(device) else torch.float32


def sweep(p: Problem, val_x: torch.Tensor, val_y: torch.Tensor, *, max_iter: int, tol: float
          ) -> tuple[np.ndarray, torch.Tensor, dict]:
    """CLIP_benchmark's coarse-to-fine search of GRID, for B problems at once, by top-1 on their validation sets.

    Shape: val_x (B, M, D) (no bias column), val_y (B, M) -> (best grid index per problem (B,), its W (B, D+1, C), log).
    A value already fitted is not refitted. The coarse values start from zero; each later one from
    ``_start``. Ties keep the first value in the order tried, as CLIP_benchmark's find_peak.
    """
    b = val_x.shape[0]
    fitted: list[dict[int, tuple[float, torch.Tensor]]] = [{} for _ in range(b)]

    def run(cands: list[list[int]], starts: torch.Tensor | None = None, lam0: torch.Tensor | None = None) -> None:
        lam = torch.tensor([[GRID[i] for i in row] for row in cands], dtype=torch.float32)
        w, _ = fit(p, lam, starts, max_iter=max_iter, tol=tol, lam0=lam0)
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
    nearest fitted value where there is one: a quadratic through the three. Measured on Fashion-MNIST pixels
    (L-BFGS steps to the tolerance from there, the same objective within 3e-4): lambda = 2.15e-6 from 1e-6,
    4.6e-6 and 2.15e-5, 7 steps against 25 from the straight line between the first two, and 4.6e-6 7 against 9
    (53 from the nearer neighbour moved by the Newton predictor). At lambda ~1e-6 the tolerance cannot tell
    neighbours apart (the unmoved neighbour meets it at once, with an objective 10% too high), so the start must
    already be close. At the grid's edge: the nearer side's solution, to be moved by the predictor (see ``fit``).
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


def split_train_val(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of train into (fit, validation) indices, stratified when every class has two samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    labels = y.cpu().numpy()
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and len(y) * fraction >= len(counts[counts > 0]) else None
    fit_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return torch.from_numpy(np.sort(fit_idx)), torch.from_numpy(np.sort(val_idx))


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(top-1, top-5) fractions; top-5 is NaN with fewer than 5 classes (as CLIP_benchmark)."""
    if len(y) == 0:
        return math.nan, math.nan
    top1 = (logits.argmax(1) == y).float().mean().item()
    if num_classes < 5:
        return top1, math.nan
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    return top1, top5


def mean_per_class_recall(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    hit = torch.zeros(num_classes).index_add_(0, y, (pred == y).float())
    seen = torch.bincount(y, minlength=num_classes).float()
    return (hit[seen > 0] / seen[seen > 0]).mean().item() if len(y) else math.nan


def rows_with_bias(x: torch.Tensor, rows: torch.Tensor, normalise: bool) -> torch.Tensor:
    """``with_bias(prepare(x[rows], normalise))`` written into one buffer: two passes over the rows fewer
    (~0.1 s against ~0.25 s on 60k x 784; the same bits). Shape: x (N, D), rows (M,) -> (M, D+1) float32."""
    out = torch.empty(len(rows), x.shape[1] + 1, device=x.device)
    out[:, -1] = 1.0
    feats = out[:, :-1]
    rows = rows.to(x.device)
    if x.dtype == torch.float32:
        torch.index_select(x, 0, rows, out=feats)
    else:
        feats.copy_(x.index_select(0, rows))
    if normalise:  # as F.normalize: x / max(||x||, 1e-12)
        feats.div_(torch.linalg.vector_norm(feats, dim=1, keepdim=True).clamp_min_(1e-12))
    return out


def prepare(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    x = x.float()
    return F.normalize(x, dim=-1) if normalise else x


@PROTOCOLS.register("linear")
@threads_by_size(lambda train, test: train.x.numel())
def evaluate(train: Features, test: Features, *, seed: int = 0, val_fraction: float = 0.2, normalise: bool = True,
             max_iter: int = 500, tol: float = 1e-4, matmul_dtype: str = "auto", device: str | None = None,
             **_ignored) -> Metrics:
    """``linear``: top-1/top-5 on test of the probe refit on train+val with the regularisation chosen on val.

    ``matmul_dtype``: ``auto`` (bfloat16 forward products where native and N is large), ``float32``, ``bfloat16``.
    """
    dev = resolve_device(train, device)
    dtype = product_dtype(len(train), dev) if matmul_dtype == "auto" else getattr(torch, matmul_dtype)
    c = max(train.num_classes, test.num_classes)
    fit_idx, val_idx = split_train_val(train.y, val_fraction, seed)
    # Rows ordered [fit; val]: the refit set is the whole tensor, the sweep's set a view of its head.
    order = torch.cat([fit_idx, val_idx])
    x = rows_with_bias(train.x, order, normalise).to(dev)[None]
    y = train.y[order].to(dev)[None]
    n_fit = len(fit_idx)
    # One row-major low-precision copy serves both: the sweep's rows are its head. The transposed copy is of
    # the sweep's rows alone (a strided view would be copied by every product); the refit's validation rows
    # (a fifth) multiply through the row-major copy.
    fast = None if dtype == torch.float32 else x.to(dtype)
    head = None if fast is None else fast[:, :n_fit]
    with ThreadPoolExecutor(1) as pool:
        # torch's transpose runs on one thread: the copy is made on the other core while the moments and their
        # eigendecomposition run here (measured: ~210 ms against ~280 ms one after the other; the same bits).
        pending = pool.submit(transposed, head) if head is not None and dev.type == "cpu" else None
        sweep_problem = Problem.build(x[:, :n_fit], y[:, :n_fit], c, dtype, fast=(head, None))
        fast_t = sweep_problem.fast_t = None if pending is None else pending.result()
    peak, w_sweep, log = sweep(sweep_problem, x[:, n_fit:, :-1], y[:, n_fit:], max_iter=max_iter, tol=tol)
    lam = float(GRID[peak[0]])
    spectrum, n_val = sweep_problem.spectrum, x.shape[1] - n_fit
    # The refit's mean from the sweep's and the validation rows' (a pass over a fifth of x instead of all of it).
    mean = (sweep_problem.mean.double() * n_fit + x[:, n_fit:, :-1].sum(1).double()) / x.shape[1]
    del sweep_problem
    full = Problem.build(x, y, c, dtype, (mean, None), (fast, fast_t))
    # The refit starts from the sweep's solution, on 25% more data: the sweep's covariance still preconditions.
    w, info = fit(full, torch.tensor([[lam]]), w_sweep[:, None], max_iter=max_iter, tol=tol, spectrum=spectrum)
    logits = predict_logits(w[0, 0], prepare(test.x, normalise).to(dev)).cpu()
    top1, top5 = topk_accuracy(logits, test.y.cpu(), c)
    return {"linear": {
        "top1": top1, "top5": top5, "mean_per_class_recall": mean_per_class_recall(logits.argmax(1), test.y.cpu(), c),
        "regularisation": lam, "C_sklearn": 1.0 / (lam * x.shape[1]), "val_top1": log["val_top1"][0],
        "grid": "logspace(-6,2,97)", "search": "coarse-to-fine (CLIP_benchmark)", "fits": log["fits"][0],
        "val_fraction": val_fraction, "refit": "train+val", "normalised": normalise, "solver": "L-BFGS",
        "matmul_dtype": str(dtype).removeprefix("torch."), "max_iter": max_iter, "tol": tol,
        "iterations": int(info["iterations"][0, 0]), "converged": bool(info["converged"][0, 0]),
        "n_train": n_fit, "n_val": n_val, "n_test": len(test), "num_classes": c, "seed": seed,
    }}


# --------------------------------------------------------------------------- the papers' SGD probe


@dataclass(frozen=True)
class PaperRecipe:
    """A published linear-probe recipe: SGD through the frozen backbone, on augmented images."""

    optimizer: str  # sgd | lars
    lr: float  # base rate for a batch of 256 when ``scale_lr``
    scale_lr: bool
    epochs: int
    batch_size: int
    schedule: str  # step (x0.1 at 60% and 80% of training) | cosine (after linear warm-up)
    warmup_epochs: int
    head_bn: bool  # BatchNorm1d(affine=False, eps=1e-6) before the linear layer
    momentum: float = 0.9
    weight_decay: float = 0.0
    init_std: float = 0.01


PAPER_RECIPES = {
    # MoCo v1/v2 main_lincls.py: SGD lr 30, batch 256, 100 epochs, x0.1 at 60 and 80, wd 0, fc ~ N(0, 0.01).
    "moco": PaperRecipe("sgd", 30.0, False, 100, 256, "step", 0, head_bn=False),
    # MAE main_linprobe.py: LARS, base lr 0.1 x bs/256, batch 16384, 90 epochs (10 warm-up) cosine, wd 0,
    # head = BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01).
    "mae": PaperRecipe("lars", 0.1, True, 90, 16384, "cosine", 10, head_bn=True),
}


def linear_probe_paper(encoder: torch.nn.Module, dataset, *, recipe: str = "mae", epochs: int | None = None,
                       batch_size: int | None = None, lr: float | None = None, crop_scale=(0.08, 1.0),
                       device: str | torch.device = "cpu", seed: int = 0) -> Metrics:
    """``linear_paper``: a linear head trained by SGD on the frozen encoder, with RandomResizedCrop + flip.

    The encoder stays in eval mode (BatchNorm statistics frozen, as MoCo's ``model.eval()``) and is
    re-run on fresh augmentations every step, as the papers do (no feature cache). Scored once, after
    the last epoch, on the un-augmented test images (never the best epoch on test, as DINO reports).
    ``dataset`` is a ``bench.data.Dataset``; ``epochs``, ``batch_size`` and the base ``lr`` override the
    recipe (small runs: MAE's rate assumes batch 16384 and 90 epochs; an override is recorded as such);
    ``crop_scale`` is RandomResizedCrop's area range (torchvision's and the papers' (0.08, 1) by default).
    """
    from dataclasses import replace

    from protocols.features import extract

    if recipe not in PAPER_RECIPES:
        raise ValueError(f"unknown paper recipe {recipe!r}; choose one of {', '.join(PAPER_RECIPES)}")
    rc = PAPER_RECIPES[recipe] if lr is None else replace(PAPER_RECIPES[recipe], lr=lr)
    dev = torch.device(device)
    epochs = epochs or rc.epochs
    bs = min(batch_size or rc.batch_size, len(dataset.train_y))
    mean, std = dataset.mean_std()
    was_training = encoder.training
    grads = [p.requires_grad for p in encoder.parameters()]
    encoder.eval()
    encoder.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # kornia draws its crops from the global generator
            head, lr, steps, loss = _train_head(encoder, dataset, rc, epochs, bs, mean, std, dev, seed, crop_scale)
        with torch.no_grad():
            logits = head(extract(encoder, dataset.test_x, mean, std, dev).to(dev)).cpu()
    finally:
        encoder.train(was_training)
        for p, flag in zip(encoder.parameters(), grads, strict=True):
            p.requires_grad_(flag)
    c = dataset.num_classes
    top1, top5 = topk_accuracy(logits, dataset.test_y, c)
    return {"linear_paper": {
        "top1": top1, "top5": top5, "recipe": recipe, "optimizer": rc.optimizer, "lr": lr, "base_lr": rc.lr,
        "lr_overridden": rc.lr != PAPER_RECIPES[recipe].lr,
        "batch_size": bs, "epochs": epochs, "steps": steps, "schedule": rc.schedule, "warmup_epochs": rc.warmup_epochs,
        "weight_decay": rc.weight_decay, "head_bn": rc.head_bn,
        "augment": f"RandomResizedCrop({crop_scale[0]:g}-{crop_scale[1]:g}) + flip",
        "backbone": "frozen, eval mode", "selection": "last epoch", "final_loss": loss,
        "n_train": len(dataset.train_y), "n_test": len(dataset.test_y), "num_classes": c, "seed": seed,
    }}


def _train_head(encoder, dataset, rc: PaperRecipe, epochs: int, bs: int, mean, std, dev, seed: int, crop_scale):
    """The recipe's optimiser and schedule on a fresh head; returns (head in eval mode, lr, steps, last loss)."""
    from bench.augment import Augmenter, ViewConfig
    from bench.optim import LARS, lr_factor

    crop = ViewConfig(scale=tuple(crop_scale), jitter_p=0.0, gray_p=0.0, strength=0.0)
    augment = Augmenter((crop,), dataset.channels, dataset.image_size, mean, std, dev)
    with torch.no_grad():
        dim = encoder(augment(dataset.train_x[:2].to(dev))[0]).shape[1]
    linear = torch.nn.Linear(dim, dataset.num_classes)
    if rc.head_bn:
        torch.nn.init.trunc_normal_(linear.weight, std=rc.init_std)
    else:
        torch.nn.init.normal_(linear.weight, std=rc.init_std)
    torch.nn.init.zeros_(linear.bias)
    head = (torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if rc.head_bn
            else linear).to(dev)
    lr = rc.lr * bs / 256 if rc.scale_lr else rc.lr
    groups = [{"params": [linear.weight], "weight_decay": rc.weight_decay},
              {"params": [linear.bias], "weight_decay": 0.0}]
    if rc.optimizer == "lars":
        groups[1]["lars"] = False  # biases take a plain SGD step, as MAE's LARS excludes 1-D parameters
        opt = LARS(groups, lr=lr, momentum=rc.momentum)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=rc.momentum)
    g = torch.Generator().manual_seed(seed)
    per_epoch = len(dataset.train_y) // bs
    # A shortened run keeps the recipe's shape: warm-up and step milestones scale with the epochs.
    total, warmup = per_epoch * epochs, round(per_epoch * rc.warmup_epochs * epochs / rc.epochs)
    step, loss = 0, math.nan
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(dataset.train_y), generator=g)
        for i in range(per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            if rc.schedule == "step":
                factor = 0.1 ** sum(epoch >= m * epochs for m in (0.6, 0.8))
            else:
                factor = lr_factor(step, total, warmup, "cosine")
            for grp in opt.param_groups:
                grp["lr"] = lr * factor
            with torch.no_grad():
                feats = encoder(augment(dataset.train_x[idx].to(dev))[0])
            batch_loss = F.cross_entropy(head(feats), dataset.train_y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            step, loss = step + 1, float(batch_loss.detach())
    return head.eval(), lr, step, loss
