"""Every loss against a slow reference written here from its paper's equations / pseudo-code.

References loop over samples and entries in float64 with explicit exp/log (no F.cross_entropy), so
they share no code path with the vectorised losses. Shapes include N=1 and K < D.
"""

from __future__ import annotations

import math

import pytest
import torch

from methods.losses.barlow import barlow_twins_loss
from methods.losses.byol import byol_loss, simsiam_loss
from methods.losses.dino import dino_loss
from methods.losses.instdisc import nce_loss
from methods.losses.moco import info_nce_loss
from methods.losses.swav import sinkhorn_knopp, swav_loss
from methods.losses.vicreg import vicreg_loss

SHAPES = [(1, 8), (2, 3), (5, 16), (16, 4)]  # (N, D)
TOL = dict(rtol=1e-9, atol=1e-9)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(v):
    norm = math.sqrt(sum(float(x) ** 2 for x in v))
    return [float(x) / norm for x in v]


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def neg_log_softmax_at(logits, i):
    m = max(logits)
    return -(logits[i] - m - math.log(sum(math.exp(x - m) for x in logits)))


# --------------------------------------------------------------------------- SimCLR / MoCo / InstDisc


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("k", [1, 3, 40])
def test_info_nce_with_queue_matches_moco_pseudo_code(n, d, k):
    q, key, t = rand(n, d, seed=3), rand(n, d, seed=4), 0.07
    queue = torch.nn.functional.normalize(rand(k, d, seed=5), dim=1)
    losses = []
    for i in range(n):
        qi, ki = unit(q[i]), unit(key[i])
        logits = [dot(qi, ki) / t] + [dot(qi, queue[j]) / t for j in range(k)]  # positive at index 0
        losses.append(neg_log_softmax_at(logits, 0))
    expected = torch.tensor(sum(losses) / n, dtype=torch.float64)
    assert torch.allclose(info_nce_loss(q, key, queue, t), expected, **TOL)


@pytest.mark.parametrize("n,d", SHAPES)
def test_info_nce_in_batch_matches_moco_v3_pseudo_code(n, d):
    q, key, t = rand(n, d, seed=6), rand(n, d, seed=7), 0.2
    losses = []
    for i in range(n):
        logits = [dot(unit(q[i]), unit(key[j])) / t for j in range(n)]
        losses.append(neg_log_softmax_at(logits, i))
    expected = torch.tensor(sum(losses) / n, dtype=torch.float64)
    assert torch.allclose(info_nce_loss(q, key, None, t), expected, **TOL)


def test_info_nce_is_zero_for_an_empty_queue_and_low_for_aligned_pairs():
    q = rand(4, 8)
    assert info_nce_loss(q, q, torch.zeros(0, 8, dtype=torch.float64), 0.1).abs() < 1e-12
    far = torch.nn.functional.normalize(-q, dim=1)
    assert info_nce_loss(q, q, far, 0.1) < info_nce_loss(q, -q, far, 0.1)


@pytest.mark.parametrize("n,m", [(1, 1), (3, 5), (8, 50)])
def test_nce_loss_matches_instdisc_equations(n, m):
    num_data, log_z = 1000, 4.2
    logits = rand(n, 1 + m, seed=8) * 3
    pn = 1 / num_data
    losses = []
    for i in range(n):
        p = [math.exp(float(x) - log_z) for x in logits[i]]
        h_data = p[0] / (p[0] + m * pn)
        losses.append(-math.log(h_data) - sum(math.log(1 - pj / (pj + m * pn)) for pj in p[1:]))
    expected = torch.tensor(sum(losses) / n, dtype=torch.float64)
    assert torch.allclose(nce_loss(logits, log_z, num_data), expected, **TOL)


def test_nce_loss_needs_noise_samples():
    with pytest.raises(ValueError, match="noise"):
        nce_loss(rand(3, 1), 0.0, 10)


# --------------------------------------------------------------------------- DINO


@pytest.mark.parametrize("n,k", [(1, 3), (4, 2), (6, 10)])
@pytest.mark.parametrize("views,globals_", [(2, 2), (4, 2), (3, 1)])
def test_dino_loss_matches_reference(n, k, views, globals_):
    s = [rand(n, k, seed=10 + v) for v in range(views)]
    t = [rand(n, k, seed=20 + v) for v in range(globals_)]
    center, ts, tt = rand(k, seed=30) * 0.1, 0.1, 0.04
    terms = []
    for i in range(globals_):
        for j in range(views):
            if i == j:
                continue
            per_sample = []
            for b in range(n):
                te = [math.exp((float(t[i][b, c]) - float(center[c])) / tt) for c in range(k)]
                pt = [x / sum(te) for x in te]
                se = [float(s[j][b, c]) / ts for c in range(k)]
                log_ps = [-neg_log_softmax_at(se, c) for c in range(k)]
                per_sample.append(-sum(pt[c] * log_ps[c] for c in range(k)))
            terms.append(sum(per_sample) / n)
    expected = torch.tensor(sum(terms) / len(terms), dtype=torch.float64)
    assert torch.allclose(dino_loss(s, t, center, ts, tt), expected, **TOL)


def test_dino_loss_sends_no_gradient_to_the_teacher_and_needs_a_pair():
    s = [rand(3, 5, seed=1).requires_grad_(), rand(3, 5, seed=2).requires_grad_()]
    t = [rand(3, 5, seed=3).requires_grad_(), rand(3, 5, seed=4).requires_grad_()]
    dino_loss(s, t, torch.zeros(5, dtype=torch.float64)).backward()
    assert all(x.grad is not None for x in s) and all(x.grad is None for x in t)
    with pytest.raises(ValueError):
        dino_loss(s[:1], t[:1], torch.zeros(5, dtype=torch.float64))


# --------------------------------------------------------------------------- BYOL / SimSiam


@pytest.mark.parametrize("n,d", SHAPES)
def test_byol_and_simsiam_match_reference(n, d):
    p, z = rand(n, d, seed=40), rand(n, d, seed=41)
    byol = sum(sum((a - b) ** 2 for a, b in zip(unit(p[i]), unit(z[i]), strict=True)) for i in range(n)) / n
    simsiam = -sum(dot(unit(p[i]), unit(z[i])) for i in range(n)) / n
    assert torch.allclose(byol_loss(p, z), torch.tensor(byol, dtype=torch.float64), **TOL)
    assert torch.allclose(simsiam_loss(p, z), torch.tensor(simsiam, dtype=torch.float64), **TOL)


def test_byol_and_simsiam_stop_the_gradient_at_the_target():
    for loss in (byol_loss, simsiam_loss):
        p, z = rand(4, 6, seed=1).requires_grad_(), rand(4, 6, seed=2).requires_grad_()
        loss(p, z).backward()
        assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


# --------------------------------------------------------------------------- Barlow Twins / VICReg


def standardise_ref(z, eps):
    n, d = z.shape
    out = [[0.0] * d for _ in range(n)]
    for j in range(d):
        col = [float(z[i, j]) for i in range(n)]
        mean = sum(col) / n
        var = sum((x - mean) ** 2 for x in col) / n  # BatchNorm's biased variance (official code)
        for i in range(n):
            out[i][j] = (col[i] - mean) / math.sqrt(var + eps)
    return out


@pytest.mark.parametrize("n,d", [(2, 3), (5, 16), (16, 4)])
def test_barlow_twins_matches_pseudo_code(n, d):
    z1, z2, lambd, eps = rand(n, d, seed=50), rand(n, d, seed=51), 0.0051, 1e-5
    a, b = standardise_ref(z1, eps), standardise_ref(z2, eps)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    assert torch.allclose(barlow_twins_loss(z1, z2, lambd, eps), torch.tensor(loss, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("n,d", [(2, 3), (5, 16), (16, 4)])
def test_vicreg_matches_paper_equations(n, d):
    z1, z2 = rand(n, d, seed=60) * 0.5, rand(n, d, seed=61) * 2
    lam, mu, nu, eps = 25.0, 25.0, 1.0, 1e-4

    def variance(z):  # eq. 1 with gamma = 1
        out = 0.0
        for j in range(d):
            col = [float(z[i, j]) for i in range(n)]
            m = sum(col) / n
            out += max(0.0, 1 - math.sqrt(sum((x - m) ** 2 for x in col) / (n - 1) + eps))
        return out / d

    def covariance(z):  # eqs. 3-4
        means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
        out = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    cab = sum((float(z[i, a]) - means[a]) * (float(z[i, b]) - means[b]) for i in range(n)) / (n - 1)
                    out += cab**2
        return out / d

    invariance = sum((float(z1[i, j]) - float(z2[i, j])) ** 2 for i in range(n) for j in range(d)) / (n * d)
    # Eq. 6 sums v(Z) + v(Z'); the official code (and vicreg_loss) averages them: mu / 2 here.
    expected = lam * invariance + mu / 2 * (variance(z1) + variance(z2)) + nu * (covariance(z1) + covariance(z2))
    got = vicreg_loss(z1, z2, lam, mu, nu, eps)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("loss", [barlow_twins_loss, vicreg_loss])
def test_batch_statistic_losses_reject_a_single_sample(loss):
    with pytest.raises(ValueError, match="N >= 2"):
        loss(rand(1, 4), rand(1, 4))


def test_vicreg_variance_term_penalises_collapse():
    healthy = rand(64, 8) * 2
    collapsed = torch.ones(64, 8, dtype=torch.float64) + 1e-3 * rand(64, 8)
    assert vicreg_loss(collapsed, collapsed, 0, 1, 0) > 0.98  # std ~0.01 -> relu(1 - 0.01)
    assert vicreg_loss(healthy, healthy, 0, 1, 0) < 0.05


# --------------------------------------------------------------------------- SwAV


def sinkhorn_ref(scores, eps, iters):
    """SwAV paper Algorithm 1 (the r/c marginal form), in float64 Python lists."""
    n, k = scores.shape
    q = [[math.exp(float(scores[b, c]) / eps) for b in range(n)] for c in range(k)]  # (K, N)
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        u = [sum(row) for row in q]
        q = [[x * (1 / k) / u[c] for x in q[c]] for c in range(k)]
        col = [sum(q[c][b] for c in range(k)) for b in range(n)]
        q = [[q[c][b] * (1 / n) / col[b] for b in range(n)] for c in range(k)]
    col = [sum(q[c][b] for c in range(k)) for b in range(n)]
    return [[q[c][b] / col[b] for c in range(k)] for b in range(n)]  # (N, K), rows sum to 1


@pytest.mark.parametrize("n,k", [(1, 4), (4, 3), (6, 20), (12, 5)])
def test_sinkhorn_matches_swav_pseudo_code(n, k):
    scores = torch.tanh(rand(n, k, seed=70))  # cosine-like scores in [-1, 1]
    got = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.allclose(got, torch.tensor(sinkhorn_ref(scores, 0.05, 3), dtype=torch.float64), **TOL)
    assert torch.allclose(got.sum(1), torch.ones(n, dtype=torch.float64))


def test_sinkhorn_converges_to_equal_prototype_use():
    codes = sinkhorn_knopp(torch.tanh(rand(30, 6, seed=71)), 0.05, 200)
    assert torch.allclose(codes.sum(0), torch.full((6,), 30 / 6, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("n,k", [(1, 4), (4, 3), (6, 20)])
@pytest.mark.parametrize("views,queue", [(2, 0), (4, 0), (4, 5)])
def test_swav_loss_matches_reference(n, k, views, queue):
    scores = [torch.tanh(rand(n, k, seed=80 + v)) for v in range(views)]
    qs = [torch.tanh(rand(queue, k, seed=90 + a)) for a in range(2)] if queue else None
    t = 0.1
    total = 0.0
    for ai, a in enumerate((0, 1)):
        s = torch.cat([qs[ai], scores[a]]) if qs else scores[a]
        codes = sinkhorn_ref(s, 0.05, 3)[-n:]
        sub = 0.0
        for v in range(views):
            if v == a:
                continue
            logits = [[float(x) / t for x in row] for row in scores[v]]
            sub += sum(sum(codes[b][c] * neg_log_softmax_at(logits[b], c) for c in range(k)) for b in range(n)) / n
        total += sub / (views - 1)
    expected = torch.tensor(total / 2, dtype=torch.float64)
    assert torch.allclose(swav_loss(scores, t, 0.05, 3, (0, 1), qs), expected, **TOL)
