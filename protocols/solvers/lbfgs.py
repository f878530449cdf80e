"""The L-BFGS loop of the logistic-regression solver, for a batch of models that each stop on their own.

``fit`` is the entry point (see its docstring); ``Models`` is the typed state of the models still being
optimised, ``LBFGS`` the problem-level constants and the steps that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from protocols.base import threads_for
from protocols.solvers.logreg import Problem, precondition

Pair = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (s, y, rho) of one L-BFGS update


@dataclass
class Models:
    """The models still being optimised; every tensor has the model batch (B, L) in front.

    Shape: lam, tol, f (objective, float64), sq (||W||^2), stalled (B, L); w and gw (B, L, D+1, C) the centred
    weights and their gradient; z (B, L, C, N) the logits; in the preconditioned variables (None until a model
    needs a step): scale (B, L, D+1, 1), u and g (B, L, D+1, C); cols (L,) which of the caller's models each
    column is (CPU); hist the L-BFGS pairs.
    """

    lam: torch.Tensor
    tol: torch.Tensor
    w: torch.Tensor
    stalled: torch.Tensor
    cols: torch.Tensor
    z: torch.Tensor | None = None
    gw: torch.Tensor | None = None
    f: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    u: torch.Tensor | None = None
    g: torch.Tensor | None = None
    hist: list[Pair] = field(default_factory=list)

    def keep(self, live: torch.Tensor) -> None:
        """Drop the columns where ``live`` (L,) is False."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value[live.cpu()] if f.name == "cols" else value[:, live])
        self.hist = [(s[:, live], y[:, live], r[:, live]) for s, y, r in self.hist]


def fit(p: Problem, lam: torch.Tensor, w0: torch.Tensor | None = None, *, max_iter: int = 500,
        tol: float | torch.Tensor = 1e-4, memory: int = 60, spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
        lam0: torch.Tensor | None = None, refresh_every: int = 20) -> tuple[torch.Tensor, dict]:
    """Minimise mean CE + lam/2 ||W||^2 for every (problem, lambda) with L-BFGS, each model stopping on its own.

    The weights are parametrised around the feature mean (logits (x - mean) W + b', the same model with
    b = b' - mean W), so the bias decouples from W, and preconditioned: theta = F u with F from
    ``precondition`` (``spectrum``, by default ``p.spectrum``; a problem without one needs it given). The
    Hessian in u starts at the identity, so the unit step is the natural first try (Armijo backtracking per
    model). F is made only once a model needs a step (a warm start often meets the tolerance at once). Logits
    move along the search line as z + t * (x d), so a trial step costs no product with x; they are recomputed
    exactly in float32 every ``refresh_every`` steps and before a model is declared converged (max |dF/dW| <=
    tol on W and bias; ``tol`` a number or one per model (B, L)).
    ``w0`` solved for ``lam0`` is first moved along the solution path, W - (lam - lam0) H^-1 [W; 0] with
    H^-1 ~ F F' (a Newton predictor): the start then differs from the neighbour's solution by what the change
    of lambda asks, even where the neighbour already meets the tolerance.
    Shape: lam (B, L), w0 (B, L, D+1, C) or None (data-space weights, last row the bias) -> same, and an info
    dict of per-model iterations, grad_max, objective, stalled and converged (B, L).
    """
    b, n, d1 = p.x.shape
    with threads_for(b * n * max(d1, lam.shape[1] * p.num_classes), p.x.device):
        return LBFGS(p, p.spectrum if spectrum is None else spectrum, lam.shape[1]).run(
            lam, w0, lam0, max_iter=max_iter, tol=tol, memory=memory, refresh_every=refresh_every)


class LBFGS:
    """What every model of one call shares: the problem, its labels and mean, and the rotation R of F."""

    def __init__(self, p: Problem, spectrum: tuple[torch.Tensor, torch.Tensor], n_models: int) -> None:
        self.p, self.spectrum = p, spectrum
        self.b, self.n, self.d1 = p.x.shape
        self.c = p.num_classes
        self.yi = p.y[:, None, None, :].expand(self.b, n_models, 1, self.n)
        self.mean = p.mean[:, None, None, :]  # (B, 1, 1, D)
        self.rot = self.rot_t = None  # R (B, D+1, D+1) and a contiguous R', made with the first step

    def run(self, lam, w0, lam0, *, max_iter: int, tol, memory: int, refresh_every: int) -> tuple[torch.Tensor, dict]:
        st = self.start(lam, w0, lam0, tol)
        tol = st.tol.clone()
        out_w = st.w.clone()
        info = {"iterations": torch.zeros(st.lam.shape, dtype=torch.long), "grad_max": torch.zeros(st.lam.shape),
                "objective": torch.zeros(st.lam.shape, dtype=torch.float64),
                "stalled": torch.zeros(st.lam.shape, dtype=torch.bool)}
        since_exact = 0
        for it in range(1, max_iter + 2):
            grad_max = st.gw.abs().amax((2, 3))
            small = grad_max <= st.tol
            if small.any() and since_exact:
                self.exact(st, small.any(0))  # confirm with exact logits before stopping anyone (only those)
                grad_max = st.gw.abs().amax((2, 3))
                small = grad_max <= st.tol
            done = (small | st.stalled).all(0)  # a column leaves once finished in every problem
            if it > max_iter:
                done[:] = True
            if done.any():
                _record(out_w, info, st, done, grad_max, it - 1)
                if done.all():
                    break
                st.keep(~done)
            refresh = since_exact + 1 >= refresh_every
            self.step(st, memory, refresh)
            since_exact = 0 if refresh else since_exact + 1
        info["converged"] = info["grad_max"] <= tol.cpu()
        return self.to_data(out_w), info

    def start(self, lam: torch.Tensor, w0: torch.Tensor | None, lam0: torch.Tensor | None, tol) -> Models:
        """The models at their starting weights, with logits, objective and gradient."""
        b, d1, c, dev = self.b, self.d1, self.c, self.p.x.device
        lam = lam.to(dev, torch.float32)
        n_models = lam.shape[1]
        if w0 is None:
            w = torch.zeros(b, n_models, d1, c, device=dev)
        else:
            w0 = w0.to(dev, torch.float32).expand(b, n_models, d1, c)
            w = torch.cat([w0[:, :, :-1], w0[:, :, -1:] + self.mean @ w0[:, :, :-1]], 2)
        st = Models(lam=lam, tol=torch.as_tensor(tol, dtype=torch.float32, device=dev).expand(b, n_models).clone(),
                    w=w, stalled=torch.zeros(b, n_models, dtype=torch.bool, device=dev), cols=torch.arange(n_models))
        if w0 is not None and lam0 is not None and bool((lam0.to(dev) != lam).any()):
            self.precondition(st)
            penalty_grad = torch.cat([w[:, :, :-1], torch.zeros_like(w[:, :, -1:])], 2)
            st.u = st.u - (lam - lam0.to(dev, torch.float32))[..., None, None] * st.scale * _rotate(self.rot_t, penalty_grad)
            st.w = _rotate(self.rot, st.scale * st.u)
        if w0 is None:  # zero weights, zero logits: no product needed
            st.z = self.p.x.new_zeros(b, n_models, c, self.n)
            self.gradient(st, *_softmax_ce(st.z, self.yi))
        else:
            self.exact(st)
        return st

    def step(self, st: Models, memory: int, refresh: bool) -> None:
        """One L-BFGS step of every live model (Armijo backtracking each); ``refresh``: end on exact logits."""
        if st.scale is None:
            self.precondition(st)
        live, n = st.w.shape[1], self.n
        direction = _two_loop(st)
        dw = _rotate(self.rot, st.scale * direction)
        xd = self.logits(self.to_data(dw))
        slope = _dot(st.g, direction).double()
        wd = (st.w[:, :, :-1] * dw[:, :, :-1]).sum((2, 3)).double()
        dd = dw[:, :, :-1].pow(2).sum((2, 3)).double()
        step = torch.ones_like(slope)
        for _ in range(40):
            z_try = torch.addcmul(st.z, step.float()[..., None, None], xd)
            ce, e, s = _softmax_ce(z_try, self.yi[:, :live])
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
            ce, e, s = _softmax_ce(z_try, self.yi[:, :live])
        st.z = z_try
        if refresh:  # the exact logits' gradient, instead of (not after) the line search's
            self.exact(st)
        else:
            self.gradient(st, ce, e, s)
        s_vec, y_vec = st.u - u_old, st.g - g_old
        sy = _dot(s_vec, y_vec)
        rho = torch.where(sy > 1e-10 * _dot(s_vec, s_vec).sqrt() * _dot(y_vec, y_vec).sqrt(),
                          1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        st.hist = (st.hist + [(s_vec, y_vec, rho)])[-memory:]

    def precondition(self, st: Models) -> None:
        """F for the live models, and their weights and gradient in u."""
        self.rot, st.scale = precondition(self.spectrum, st.lam, self.c)
        self.rot_t = self.rot.transpose(1, 2).contiguous()
        st.u = _rotate(self.rot_t, st.w) / st.scale
        if st.gw is not None:
            st.g = st.scale * _rotate(self.rot_t, st.gw)

    def to_data(self, t: torch.Tensor) -> torch.Tensor:
        """Centred (W, b') -> data-space (W, b' - mean W)."""
        return torch.cat([t[:, :, :-1], t[:, :, -1:] - self.mean @ t[:, :, :-1]], 2)

    def logits(self, weights: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Data-space weights (B, L, D+1, C) -> logits (B, L, C, N)."""
        b, live = self.b, weights.shape[1]
        a = weights.transpose(2, 3).reshape(b, live * self.c, self.d1)
        return self.p.products.forward(a, exact).view(b, live, self.c, self.n)

    def gradient(self, st: Models, ce, e, s, sel: torch.Tensor | None = None) -> None:
        """Objective and gradient of the live models from their softmax pieces; with ``sel`` (L,) bool, of the
        selected models only, written into their places."""
        b, n, d1, c = self.b, self.n, self.d1, self.c
        w, lam = (st.w, st.lam) if sel is None else (st.w[:, sel], st.lam[:, sel])
        live = w.shape[1]
        r = e.div_(s).scatter_add_(2, self.yi[:, :live], e.new_full((1, 1, 1, 1), -1.0).expand(b, live, 1, n))
        gw = self.p.products.backward(r.view(b, live * c, n)).view(b, d1, live, c).permute(0, 2, 1, 3) / n
        gw = torch.cat([gw[:, :, :-1] - self.mean.transpose(2, 3) * gw[:, :, -1:], gw[:, :, -1:]], 2)  # wrt centred W
        sq = w[:, :, :-1].pow(2).sum((2, 3))
        gw[:, :, :-1] += lam[..., None, None] * w[:, :, :-1]
        f = ce / n + 0.5 * lam.double() * sq.double()
        g = None
        if st.scale is not None:
            g = (st.scale if sel is None else st.scale[:, sel]) * _rotate(self.rot_t, gw)
        if sel is None:
            st.gw, st.sq, st.f, st.g = gw, sq, f, g
            return
        st.gw[:, sel], st.sq[:, sel], st.f[:, sel] = gw, sq, f
        if g is not None:
            st.g[:, sel] = g

    def exact(self, st: Models, sel: torch.Tensor | None = None) -> None:
        """Logits from the float32 product, for all live models or the ``sel`` ones (L,) bool."""
        if sel is None:
            st.z = self.logits(self.to_data(st.w), exact=True)
            self.gradient(st, *_softmax_ce(st.z, self.yi[:, : st.w.shape[1]]))
            return
        z = self.logits(self.to_data(st.w[:, sel]), exact=True)
        st.z[:, sel] = z
        self.gradient(st, *_softmax_ce(z, self.yi[:, : z.shape[1]]), sel=sel)


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


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((2, 3))


def _rotate(rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """R t for every model in one product (R' t takes a contiguous R': a transposed view doubled the product's
    time). Shape: rot (B, D+1, D+1), t (B, L, D+1, C) -> (B, L, D+1, C)."""
    b, live, d1, c = t.shape
    out = rot @ t.transpose(1, 2).reshape(b, d1, live * c)
    return out.view(b, d1, live, c).transpose(1, 2)


def _record(out_w, info, st: Models, done, grad_max, iterations) -> None:
    idx = st.cols[done.cpu()]
    out_w[:, idx.to(out_w.device)] = st.w[:, done]
    info["iterations"][:, idx] = iterations
    info["grad_max"][:, idx] = grad_max[:, done].cpu()
    info["objective"][:, idx] = st.f[:, done].cpu()
    info["stalled"][:, idx] = st.stalled[:, done].cpu()


def _two_loop(st: Models) -> torch.Tensor:
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
