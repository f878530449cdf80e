"""Batched L2-regularised multinomial logistic regression: the linear and few-shot probes' solver.

Each fit minimises ``mean CE(xW + b, y) + lambda / 2 * ||W||^2`` (bias unpenalised; scikit-learn's
C = 1 / (lambda * N)) to a gradient tolerance with L-BFGS, for many lambdas and many problems of equal size
(few-shot draws) at once: one batched matrix product per step serves all of them. The variables are
preconditioned by the Gauss-Newton curvature at zero plus lambda (the features' covariance / C, from one
eigendecomposition per problem, so every lambda costs only a scaling), which makes raw pixel features as easy
as whitened ones. Where bfloat16 products are native and N is large, the two products of a step read a
bfloat16 copy of x (``Products``); exact float32 products refresh the iterate and confirm every stop.
The problem and its algebra are here; the L-BFGS loop is ``protocols.solvers.lbfgs.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocols.solvers.products import Products

PRECOND_ROWS = 16384  # rows that estimate the preconditioner's matrices (the objective always uses all)


@dataclass
class Problem:
    """B equally sized training sets with their preconditioner.

    Shape: x (B, N, D+1) float32 features with a last column of ones (the bias); y (B, N); mean (B, D) the
    feature mean; spectrum the eigenvalues (B, D) and eigenvectors (B, D, D) of the features' covariance
    (float64; ``precondition``), or None where every fit is given one; products: how x is multiplied.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    spectrum: tuple[torch.Tensor, torch.Tensor] | None
    products: Products

    @property
    def dtype(self) -> torch.dtype:
        return self.products.dtype

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32,
              moments: tuple[torch.Tensor, torch.Tensor | None] | None = None,
              products: Products | None = None) -> Problem:
        """Shape: x (B, N, D+1) from ``with_bias``, y (B, N); ``moments`` = centred_moments(x) (the scatter
        None: no spectrum) and ``products`` = Products.build(x, dtype) when the caller has them already."""
        products = products or Products.build(x, dtype)
        mean, scatter = moments if moments is not None else centred_moments(x[..., :-1])
        spectrum = None
        if scatter is not None:
            # float32: its round-off ~1e-7 of the largest variance is far below lambda * C, and the rotation
            # only has to be close to orthogonal.
            vals, vecs = torch.linalg.eigh((scatter / x.shape[1]).float())
            spectrum = (vals.double().clamp_min(0.0), vecs.double())  # a zero-variance direction can come out at -eps
        return cls(x, y, num_classes, mean.float(), spectrum, products)


def with_bias(x: torch.Tensor) -> torch.Tensor:
    """Shape: (..., N, D) -> (..., N, D+1) float32 with a last column of ones."""
    return torch.cat([x.float(), x.new_ones(*x.shape[:-1], 1, dtype=torch.float32)], -1)


def rows_with_bias(x: torch.Tensor, rows: torch.Tensor, normalise: bool) -> torch.Tensor:
    """``with_bias`` of the rows ``rows`` of x, L2-normalised as F.normalize when ``normalise``, written into one
    buffer (two passes over the rows fewer than gathering, normalising and concatenating; the same bits).
    Shape: x (N, D), rows (M,) -> (M, D+1) float32."""
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


def precondition(spectrum: tuple[torch.Tensor, torch.Tensor], lam: torch.Tensor, num_classes: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, scale) with F = R diag(scale) and F F' = (G / C + lam * [W rows])^-1: the change of variables W = F u.

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


def span_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and an orthonormal basis Q of the span of the centred rows, for problems with fewer samples than features.

    The penalised weights of the optimum lie in that span (the gradient in W is (x - mean)' R + lam W), and
    ||Q A|| = ||A||, so fitting on the coordinates (x - mean) Q and mapping back with ``from_span`` solves the
    original problem exactly, with an N x N curvature instead of D x D.
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


def into_span(w: torch.Tensor, mean: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Data-space weights -> span coordinates (the inverse of ``from_span`` for weights inside the span; the part
    outside is dropped, which only a warm start sees). Shape: w (B, D+1, C) -> (B, N+1, C)."""
    weights = w[:, :-1]
    return torch.cat([q.transpose(1, 2) @ weights, w[:, -1:] + mean @ weights], 1)


def predict_logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape: w (..., D+1, C) (last row the bias), x (..., M, D) -> (..., M, C), batch dimensions broadcast."""
    if w.dim() == 4 and x.dim() == 4 and x.shape[1] == 1 < w.shape[1]:
        # L models on one set: one product with their weights side by side (matmul's broadcast copied x L times).
        b, live, d1, c = w.shape
        side = w[:, :, :-1].permute(0, 2, 1, 3).reshape(b, d1 - 1, live * c)
        return (x[:, 0].float() @ side).view(b, -1, live, c).permute(0, 2, 1, 3) + w[:, :, None, -1]
    return x.float() @ w[..., :-1, :] + w[..., -1:, :]
