"""Linear probe: the solver against scikit-learn, the CLIP_benchmark search order, cross-validation on small sets,
batching, few-shot, edge cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

import protocols.linear as lin
import protocols.solvers.lbfgs as lbfgs
import protocols.solvers.products as products_module
from protocols import PROTOCOLS
from protocols.base import Features
from protocols.solvers.folds import stratified_folds
from protocols.solvers.logreg import Problem, from_span, predict_logits, span_basis, to_span, with_bias
from protocols.solvers.products import Products, dithered_bf16, product_dtype, transposed


@pytest.fixture(scope="module")
def digits():
    from bench.data import load_dataset

    ds = load_dataset("digits")
    norm = lambda t: torch.nn.functional.normalize(t.reshape(len(t), -1).float(), dim=1)
    return norm(ds.train_x), ds.train_y, norm(ds.test_x), ds.test_y


def accuracy(w, x, y):
    return (predict_logits(w, x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("lam", [1e-5, 1e-3, 1e-1])
def test_fit_matches_sklearn_at_the_same_c(digits, lam):
    x, y, xt, yt = digits
    problem = Problem.build(with_bias(x)[None], y[None], 10)
    w, info = lbfgs.fit(problem, torch.tensor([[lam]]), tol=1e-5)
    sk = LogisticRegression(C=1 / (lam * len(x)), max_iter=10000, tol=1e-10).fit(x.numpy(), y.numpy())
    assert bool(info["converged"].all())
    assert abs(accuracy(w[0, 0], xt, yt) - sk.score(xt.numpy(), yt.numpy())) <= 0.005
    # Same minimiser: compare objective values (sklearn's scaled to ours) rather than raw weights.
    skw = torch.from_numpy(np.vstack([sk.coef_.T, sk.intercept_[None]])).float()
    ours = objective(w[0, 0], x, y, lam)
    assert ours <= objective(skw, x, y, lam) + 1e-6


def objective(w, x, y, lam):
    logits = predict_logits(w, x).double()
    return (torch.nn.functional.cross_entropy(logits, y) + 0.5 * lam * w[:-1].double().pow(2).sum()).item()


def test_batched_problems_and_lambdas_equal_separate_fits(digits):
    x, y, _, _ = digits
    parts = [torch.arange(0, 600), torch.arange(600, 1200)]
    lams = torch.tensor([[1e-4, 1e-2], [1e-3, 1e-1]])
    batch = Problem.build(with_bias(torch.stack([x[p] for p in parts])), torch.stack([y[p] for p in parts]), 10)
    w, _ = lbfgs.fit(batch, lams, tol=1e-6)
    for b, p in enumerate(parts):
        single = Problem.build(with_bias(x[p])[None], y[p][None], 10)
        for j in range(2):
            ws, _ = lbfgs.fit(single, lams[b, j].view(1, 1), tol=1e-6)
            assert objective(w[b, j], x[p], y[p], lams[b, j].item()) == pytest.approx(
                objective(ws[0, 0], x[p], y[p], lams[b, j].item()), abs=1e-6)


def test_warm_start_reaches_the_same_optimum(digits):
    x, y, _, _ = digits
    problem = Problem.build(with_bias(x)[None], y[None], 10)
    cold, _ = lbfgs.fit(problem, torch.tensor([[1e-3]]), tol=1e-6)
    start, _ = lbfgs.fit(problem, torch.tensor([[1e-2]]), tol=1e-6)
    warm, info = lbfgs.fit(problem, torch.tensor([[1e-3]]), start[:, 0:1], tol=1e-6)
    assert objective(warm[0, 0], x, y, 1e-3) == pytest.approx(objective(cold[0, 0], x, y, 1e-3), abs=1e-6)


def clip_benchmark_search(val_acc):
    """CLIP_benchmark's tune_weight_decay, transcribed: returns (best index, indices in the order trained)."""
    trained = []

    def find_peak(idxs):
        best, best_acc = 0, 0
        for i in idxs:
            trained.append(i)
            if best_acc < val_acc(i):
                best, best_acc = i, val_acc(i)
        return best

    grid = np.logspace(-6, 2, 97).tolist()
    init = np.logspace(-6, 2, 7).tolist()
    peak = find_peak([i for i, v in enumerate(grid) if v in init])
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, len(grid) - 1)])
        span //= 2
    return peak, trained


@pytest.mark.parametrize("shape", ["peak37", "peak0", "peak96", "plateau", "bimodal"])
def test_sweep_follows_clip_benchmark(monkeypatch, shape):
    accs = {
        "peak37": lambda i: 0.9 - abs(i - 37) / 200,
        "peak0": lambda i: 0.9 - i / 200,
        "peak96": lambda i: 0.5 + i / 400,
        "plateau": lambda i: 0.8 if 30 <= i <= 60 else 0.7,
        "bimodal": lambda i: max(0.9 - abs(i - 20) / 50, 0.95 - abs(i - 75) / 30),
    }[shape]
    # A fake solver whose "weights" make the validation accuracy a known function of the grid index.
    monkeypatch.setattr(lin, "fit", lambda p, lam, w0=None, **kw: (lam[..., None, None].expand(*lam.shape, 2, 2), {}))
    monkeypatch.setattr(lin, "predict_logits", lambda w, x: w[..., :1, :1].expand(*w.shape[:-2], x.shape[-2], 2))
    index = {float(torch.tensor(v, dtype=torch.float32)): i for i, v in enumerate(lin.GRID)}

    def fake_val_acc(w_logits, y):
        return torch.tensor([[accs(index[float(v)]) for v in row[:, 0, 0].tolist()] for row in w_logits])

    monkeypatch.setattr(lin, "_val_top1", fake_val_acc)
    peak, _, log = lin.sweep(None, torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), max_iter=1, tol=1.0)
    expected, trained = clip_benchmark_search(accs)
    assert peak[0] == expected
    assert log["fits"][0] == len(set(trained))  # every value CLIP_benchmark trains, none twice


def test_protocol_within_half_a_point_of_sklearn(digits):
    x, y, xt, yt = digits
    out = PROTOCOLS.get("linear")(Features(x, y), Features(xt, yt))["linear"]
    sk = LogisticRegression(C=out["C_sklearn"], max_iter=10000, tol=1e-8).fit(x.numpy(), y.numpy())
    assert abs(out["top1"] - sk.score(xt.numpy(), yt.numpy())) <= 0.005
    assert out["top1"] > 0.9 and 0 < out["top5"] <= 1
    assert out["regularisation"] in lin.GRID and out["n_train"] + out["n_val"] == len(x)
    for field in ("selection", "seed", "grid", "search", "normalised", "tol", "max_iter", "matmul_dtype"):
        assert field in out


def test_small_set_chooses_lambda_by_cross_validation_as_logistic_regression_cv(digits):
    x, y, xt, yt = digits
    out = PROTOCOLS.get("linear")(Features(x, y), Features(xt, yt))["linear"]
    assert len(x) <= lin.SMALL_ROWS and out["selection"] == "stratified 5-fold cross-validation"
    assert out["cv_folds"] == 5 and out["n_train"] == len(x) and out["refit"] == "train"
    # scikit-learn's own choice of C by 5-fold CV (7 values: its default 10 takes twice as long, same choice here).
    sk = LogisticRegressionCV(Cs=7, cv=5).fit(x.numpy(), y.numpy())
    assert out["top1"] >= sk.score(xt.numpy(), yt.numpy()) - 0.005


def test_large_set_keeps_the_validation_split(digits, monkeypatch):
    x, y, xt, yt = digits
    monkeypatch.setattr(lin, "SMALL_ROWS", len(x) - 1)
    out = PROTOCOLS.get("linear")(Features(x, y), Features(xt, yt), seed=3)["linear"]
    assert out["selection"] == "validation split" and out["refit"] == "train+val" and "cv_folds" not in out
    assert out["n_val"] == math.ceil(0.2 * len(x)) and out["val_fraction"] == 0.2


def test_a_class_seen_once_falls_back_to_the_split():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.arange(40) % 3, torch.tensor([3])])
    x = torch.randn(4, 6, generator=g)[y] * 2 + torch.randn(41, 6, generator=g)
    out = PROTOCOLS.get("linear")(Features(x, y), Features(x, y))["linear"]
    assert out["selection"] == "validation split"


def test_stratified_folds_validate_every_row_once_with_equal_fitting_sets():
    y = np.array([0] * 7 + [1] * 5 + [2] * 9)
    fit, val = stratified_folds([y, y[::-1].copy()], 3, seed=0)
    assert fit.shape == (6, 14) and val.shape == (6, 7)
    for group in (0, 1):
        rows = val[3 * group:3 * group + 3]
        rows = rows[rows >= 0]
        assert sorted(rows.tolist()) == list(range(len(y)))  # each row validated exactly once
        for i in range(3 * group, 3 * group + 3):
            assert not set(fit[i].tolist()) & set(val[i].tolist())
            assert set(np.unique(y[fit[i]] if group == 0 else y[::-1][fit[i]])) == {0, 1, 2}


def test_sweep_pools_the_folds_of_one_set(monkeypatch):
    # Two folds of one set: alone they peak at grid index 20 and 70; weighted by their validation rows (3 and 1)
    # the set peaks near 20, and both folds get that one value.
    accs = [lambda i: 0.9 - abs(i - 20) / 200, lambda i: 0.9 - abs(i - 70) / 200]
    monkeypatch.setattr(lin, "fit", lambda p, lam, w0=None, **kw: (lam[..., None, None].expand(*lam.shape, 2, 2), {}))
    monkeypatch.setattr(lin, "predict_logits", lambda w, x: w[..., :1, :1].expand(*w.shape[:-2], x.shape[-2], 2))
    index = {float(torch.tensor(v, dtype=torch.float32)): i for i, v in enumerate(lin.GRID)}
    monkeypatch.setattr(lin, "_val_top1", lambda w_logits, y: torch.tensor(
        [[accs[b](index[float(v)]) for v in row[:, 0, 0].tolist()] for b, row in enumerate(w_logits)]))
    val_y = torch.tensor([[0, 1, 0], [1, -1, -1]])
    peak, _, log = lin.sweep(None, torch.zeros(2, 3, 2), val_y, max_iter=1, tol=1.0, folds=2)
    assert peak[0] == peak[1] and abs(peak[0] - 20) <= 2
    assert log["val_top1"][0] == pytest.approx((3 * accs[0](peak[0]) + accs[1](peak[0])) / 4)
    alone, _, _ = lin.sweep(None, torch.zeros(2, 3, 2), val_y, max_iter=1, tol=1.0)
    assert abs(alone[1] - 70) <= 2  # unpooled, the second fold keeps its own peak


def test_bfloat16_products_reach_the_float32_optimum(digits):
    if product_dtype(10**9, torch.device("cpu")) != torch.bfloat16:
        pytest.skip("no native bfloat16 products on this CPU")
    x, y, xt, yt = digits
    lam = torch.tensor([[1e-4, 1e-3]])
    ws = {dt: lbfgs.fit(Problem.build(with_bias(x)[None], y[None], 10, dt), lam, tol=1e-5)[0]
          for dt in (torch.float32, torch.bfloat16)}
    for j in range(2):
        f32, f16 = (objective(ws[dt][0, j], x, y, lam[0, j].item()) for dt in (torch.float32, torch.bfloat16))
        assert f16 == pytest.approx(f32, abs=1e-5)
        assert abs(accuracy(ws[torch.bfloat16][0, j], xt, yt) - accuracy(ws[torch.float32][0, j], xt, yt)) <= 0.006


@pytest.mark.parametrize("split", [True, False])
def test_bfloat16_products_match_float32_in_every_layout(digits, monkeypatch, split):
    if product_dtype(10**9, torch.device("cpu")) != torch.bfloat16:
        pytest.skip("no native bfloat16 products on this CPU")
    monkeypatch.setattr(products_module, "SPLIT_ON_CPU", split)
    x = digits[0][:1000]
    xb = with_bias(x)[None]
    r, a = torch.randn(1, 20, 1000, generator=torch.Generator().manual_seed(0)), torch.randn(1, 20, 65)
    # The refit's layout: a transposed copy of the first 600 rows only, the rest through the row-major copy; and
    # the sweep's: the first 600 rows alone, sharing the copies.
    for rows in (None, 600):
        p = Products.build(xb, torch.bfloat16, transposed_rows=rows)
        assert p.split == split
        for q, n in ((p, 1000), (p.head(600), 600)) if rows else ((p, 1000),):
            backward, forward = (r[..., :n] @ xb[:, :n]).transpose(1, 2), a @ xb[:, :n].transpose(1, 2)
            got = q.backward(r[..., :n])
            assert got.shape == backward.shape
            assert (got - backward).abs().max() <= 0.01 * backward.abs().max()
            assert (q.forward(a) - forward).abs().max() <= 0.01 * forward.abs().max()
            assert torch.equal(q.forward(a, exact=True), forward)
    assert transposed(xb.bfloat16()).shape == (1, 66, 1000)  # D+1 = 65 rows padded to an even 66


def test_unnormalised_raw_pixels(digits):
    # Raw 0..255 pixels, no L2 normalisation: the preconditioner's matrices span a wide range
    # (regression: a bfloat16 scatter matrix was not positive definite and Cholesky failed).
    from bench.data import load_dataset

    ds = load_dataset("digits")
    flat = lambda t: t.reshape(len(t), -1).float()
    out = PROTOCOLS.get("linear")(Features(flat(ds.train_x), ds.train_y), Features(flat(ds.test_x), ds.test_y),
                                  normalise=False)["linear"]
    assert out["top1"] > 0.9 and not out["normalised"]


def test_tiny_data_few_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(3, 5, generator=g)[y] * 2 + torch.randn(60, 5, generator=g)
    out = PROTOCOLS.get("linear")(Features(x[:40], y[:40]), Features(x[40:], y[40:]), seed=1)["linear"]
    assert math.isnan(out["top5"]) and 0 <= out["top1"] <= 1 and out["seed"] == 1


def test_fewshot_settings_and_draws(digits):
    x, y, xt, yt = digits
    out = PROTOCOLS.get("fewshot")(Features(x, y), Features(xt, yt), draws=2)
    assert set(out) == {"fewshot_1pct", "fewshot_10pct", "fewshot_1shot", "fewshot_5shot", "fewshot_10shot"}
    assert out["fewshot_5shot"]["n_labelled"] == 50 and "n_val" not in out["fewshot_5shot"]
    assert out["fewshot_10pct"]["n_labelled"] == sum(round(n * 0.1) for n in np.bincount(y.numpy()))
    assert len(out["fewshot_1shot"]["top1_draws"]) == 2
    # More labels help (on average over draws; digits is easy enough for this to hold by a wide margin).
    assert out["fewshot_1shot"]["top1"] < out["fewshot_10shot"]["top1"] < out["fewshot_10pct"]["top1"] + 0.05
    assert out["fewshot_10shot"]["top1"] > 0.8


@pytest.mark.parametrize("lam", [1e-4, 1e-2, 1.0])
def test_fit_in_the_span_of_few_samples_is_the_full_solution(digits, lam):
    xt = digits[2]
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(len(digits[0]), generator=g)[:30] for _ in range(2)])  # 30 samples < 64 features
    x, y = digits[0][idx], digits[1][idx]
    full, info = lbfgs.fit(Problem.build(with_bias(x), y, 10), torch.full((2, 1), lam), tol=1e-5)
    mean, q = span_basis(x)
    small, info_small = lbfgs.fit(Problem.build(with_bias(to_span(x, mean, q)), y, 10), torch.full((2, 1), lam),
                                tol=1e-5)
    mapped = from_span(small[:, 0], mean, q)
    assert bool(info["converged"].all()) and bool(info_small["converged"].all())
    assert q.shape == (2, 64, 30)
    for b in range(2):
        # Both stop at a gradient of 1e-5, which leaves objectives ~1e-6 apart (measured up to 2.2e-6 at lambda
        # 1e-4); a wrong mapping from the span costs far more.
        assert objective(mapped[b], x[b], y[b], lam) <= objective(full[b, 0], x[b], y[b], lam) + 1e-5
        agree = (predict_logits(mapped[b], xt).argmax(1) == predict_logits(full[b, 0], xt).argmax(1)).float().mean()
        assert agree >= 0.99


def test_dithered_bfloat16_rounding_is_unbiased_and_exact():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    dither = torch.randint(0, 1 << 16, (n,), dtype=torch.int32, generator=g)
    # Residuals alike across samples: round-to-nearest moves their sum by a whole bfloat16 step.
    same = torch.full((2, n), 0.1234567)
    same[1] *= -1
    q = dithered_bf16(same, dither).float()
    assert q.dtype == torch.float32 and bool((q.bfloat16().float() == q).all())  # exact in bfloat16
    assert abs(q[0].mean().item() - 0.1234567) < 2e-6 and abs(q[1].mean().item() + 0.1234567) < 2e-6
    assert abs(same[0].bfloat16().float().mean().item() - 0.1234567) > 5e-5  # what dithering avoids
    spread = torch.randn(n, generator=g) * torch.logspace(-30, 5, n)
    q = dithered_bf16(spread, dither).float()
    assert bool(((q - spread).abs() <= spread.abs() * 2**-7).all()) and bool((q.sign() == spread.sign()).all())
    assert bool((dithered_bf16(torch.zeros(4), dither[:4]) == 0).all())


def test_sweep_start_interpolates_between_fitted_neighbours():
    w = {i: torch.full((3, 2), float(i)) for i in (0, 16, 32)}
    fitted = {i: (0.5, w[i]) for i in w}
    start, lam = lin._start(fitted, 8)
    assert torch.allclose(start, torch.full((3, 2), 8.0)) and lam == pytest.approx(lin.GRID[8])
    start, lam = lin._start(fitted, 20)  # a quarter of the way from 16 to 32, uniform in log lambda
    assert torch.allclose(start, torch.full((3, 2), 20.0)) and lam == pytest.approx(lin.GRID[20])
    start, lam = lin._start(fitted, 16)
    assert start is w[16] and lam == pytest.approx(lin.GRID[16])
    start, lam = lin._start({i: fitted[i] for i in (16, 32)}, 4)  # nothing below: the nearer side, its own lambda
    assert start is w[16] and lam == pytest.approx(lin.GRID[16])


def test_a_start_that_meets_the_tolerance_needs_no_preconditioner(digits, monkeypatch):
    x, y, _, _ = digits
    problem = Problem.build(with_bias(x)[None], y[None], 10)
    w, _ = lbfgs.fit(problem, torch.tensor([[1e-3]]), tol=1e-6)
    monkeypatch.setattr(lbfgs, "precondition", lambda *a: pytest.fail("made a preconditioner"))
    again, info = lbfgs.fit(problem, torch.tensor([[1e-3]]), w, tol=1e-5)
    assert int(info["iterations"][0, 0]) == 0 and bool(info["converged"].all())
    assert torch.equal(again, w)
