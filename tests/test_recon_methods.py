"""autoencoder, mae and kmeans-features: their losses, masking, whitening, encodings, and runs through the pipeline."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

from bench.data import load_dataset
from methods import METHODS
from methods.autoencoder import corrupt
from methods.base import Batch, Context, make_config
from methods.kmeans_features import KMeansEncoder, normalise_patches, triangle, zca_fit
from methods.losses.reconstruction import mae_loss

OURS = ["autoencoder", "mae", "kmeans-features"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: 2 OpenMP threads on 2 busy cores only spin-wait
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def build(name, size=8, channels=1, backbone="convnet", backbone_args=None, **overrides):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    ctx = Context(in_channels=channels, image_size=size, num_classes=10, num_train=100, backbone=backbone,
                  backbone_args=backbone_args)
    return cls(ctx, make_config(cls, overrides))


def normalised(ds, x):
    mean, std = ds.mean_std()
    return (x.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


# --------------------------------------------------------------------------- MAE loss and masking


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_sees_only_masked_patches(norm_pix):
    torch.manual_seed(0)
    pred, target = torch.randn(4, 16, 12, requires_grad=True), torch.randn(4, 16, 12)
    mask = torch.rand(4, 16) < 0.75
    loss = mae_loss(pred, target, mask, norm_pix)
    loss.backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask].abs().sum(-1) > 0).all()
    changed = pred.detach().clone()
    changed[~mask] += 100.0
    assert torch.allclose(mae_loss(changed, target, mask, norm_pix), loss)
    changed[mask] += 1.0
    assert not torch.allclose(mae_loss(changed, target, mask, norm_pix), loss)
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt() if norm_pix else target
    manual = ((pred - t) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(loss, manual)


def test_mae_training_step_hides_the_ratio_and_its_loss_ignores_visible_predictions():
    mae = build("mae", size=28, mask_ratio=0.75, decoder_depth=1)
    seen = {}
    mae.encoder.blocks.register_forward_hook(lambda m, i, o: seen.update(enc_in=i[0].shape))

    def keep_output(module, inputs, out):
        out.retain_grad()
        seen["pred"] = out

    mae.decoder.head.register_forward_hook(keep_output)
    x = torch.randn(6, 1, 28, 28)
    torch.manual_seed(1)
    loss = mae.training_step(Batch([x], x, torch.zeros(6, dtype=torch.long), torch.arange(6)))["loss"]
    loss.backward()
    assert seen["enc_in"] == (6, 1 + 4, 128)  # CLS + the 4 visible patches of 16: the encoder sees no mask token
    grad = seen["pred"].grad[:, 1:].abs().sum(-1)  # drop the decoder's CLS position
    touched = grad > 0
    assert (touched.sum(1) == 12).all()  # exactly the 12 hidden patches carry loss
    torch.manual_seed(1)
    _, _, mask, _ = mae.predict(x)
    assert torch.equal(touched, mask)


def test_mae_builds_a_vit_whatever_the_backbone_and_keeps_vit_options():
    mae = build("mae", size=28, backbone="convnet", backbone_args={"widths": (8, 8, 8, 8)})
    assert type(mae.encoder).__name__ == "ViT" and mae.cfg.encoder == "vit" and mae.encoder.pool == "mean"
    mae = build("mae", size=32, channels=3, backbone="vit", backbone_args={"patch_size": 4, "depth": 1})
    assert mae.encoder.grid == 8 and len(mae.encoder.blocks.layers) == 1
    assert mae.paper_recipe.optimizer == "adamw" and mae.paper_recipe.betas == (0.9, 0.95)
    assert (mae.paper_recipe.lr, mae.paper_recipe.weight_decay, mae.paper_recipe.warmup_epochs) == (1.5e-4, 0.05, 40)
    (view,) = mae.views
    assert view.scale == (0.2, 1.0) and view.jitter_p == 0 and view.gray_p == 0


def test_mae_reconstruction_metric_is_masked_mse_in_pixel_space():
    mae = build("mae", size=8, norm_pix=False, decoder_depth=1).eval()
    x = torch.randn(20, 1, 8, 8)
    with torch.no_grad():
        rec = mae.extra_metrics(x)["reconstruction"]
        pred, target, mask, _ = mae.predict(x, torch.Generator().manual_seed(0))
    assert rec["mask_ratio"] == 0.75 and rec["mask_seed"] == 0 and rec["split"] == "test"
    assert rec["mse"] == pytest.approx(float(((pred - target) ** 2).mean(-1)[mask].mean()), rel=1e-5)


# --------------------------------------------------------------------------- autoencoder


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_autoencoder_reconstructs_at_the_input_size(channels, size):
    ae = build("autoencoder", size=size, channels=channels, backbone_args={"widths": (8, 8, 8, 8)})
    x = torch.randn(3, channels, size, size)
    assert ae(x).shape == x.shape
    assert ae.encoder(x).shape == (3, ae.encoder.feature_dim)


def test_denoising_corrupts_the_input_and_reconstructs_the_clean_view():
    x = torch.randn(64, 1, 28, 28)
    assert torch.equal(corrupt(x, "none", 0.3), x)
    dropped = (corrupt(x, "mask", 0.3) == 0).float().mean()
    assert 0.25 < dropped < 0.35
    assert 0.25 < float((corrupt(x, "gaussian", 0.3) - x).std()) < 0.35
    ae = build("autoencoder", size=28, backbone_args={"widths": (8, 8, 8, 8)}, noise="mask", noise_level=0.5)
    batch = Batch([x[:8]], x[:8], torch.zeros(8, dtype=torch.long), torch.arange(8))
    torch.manual_seed(3)
    loss = ae.training_step(batch)["loss"]
    torch.manual_seed(3)
    noisy = corrupt(x[:8], "mask", 0.5)
    assert torch.allclose(loss, F.mse_loss(ae(noisy), x[:8]))
    assert not torch.allclose(loss, F.mse_loss(ae(x[:8]), x[:8]))


def test_autoencoder_metric_is_the_test_mse():
    ae = build("autoencoder", size=8, backbone_args={"widths": (8, 8, 8, 8)}).eval()
    x = torch.randn(2100, 1, 8, 8)  # more than one metric batch
    with torch.no_grad():
        rec = ae.extra_metrics(x)["reconstruction"]
        assert rec["mse"] == pytest.approx(float(F.mse_loss(ae(x), x)), rel=1e-4)
    assert rec["space"] == "normalised pixels"


# --------------------------------------------------------------------------- K-means features


def test_zca_whitens_held_out_samples():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(36, 36, generator=g) * torch.logspace(0, -2, 36)  # strongly correlated, badly scaled
    fit, held_out = (torch.randn(n, 36, generator=g) @ mix.T + 3.0 for n in (40_000, 20_000))
    assert (torch.cov(held_out.T) - torch.eye(36)).abs().max() > 0.5
    mean, w = zca_fit(fit, eps=1e-9)
    cov = torch.cov(((held_out - mean) @ w).T)
    assert (cov - torch.eye(36)).abs().max() < 0.05
    assert torch.allclose(w, w.T, atol=1e-5)  # ZCA, not just any whitening: the symmetric one


def test_zca_whitens_real_patches_up_to_the_regulariser(digits):
    """Contrast-normalised patches lose one direction (the patch mean); every other direction comes out
    with variance lambda / (lambda + eps), i.e. 1 for strong directions."""
    p = F.unfold(digits.train_x.float(), 3).transpose(1, 2).reshape(-1, 9)
    p = normalise_patches(p[torch.randperm(len(p), generator=torch.Generator().manual_seed(0))], eps=10.0)
    half = len(p) // 2
    mean, w = zca_fit(p[:half], eps=1e-6)
    evals = torch.linalg.eigvalsh(torch.cov(((p[half:] - mean) @ w).T))
    assert evals[0] < 0.01  # the removed patch mean
    assert (evals[1:] - 1).abs().max() < 0.1


def test_triangle_activation_and_quadrant_pooling():
    torch.manual_seed(0)
    x, c = torch.randn(500, 9), torch.randn(16, 9)
    f = triangle(x, c)
    z = torch.cdist(x, c)
    assert torch.allclose(f, F.relu(z.mean(1, keepdim=True) - z), atol=1e-4)
    assert (f >= 0).all() and ((f > 0).float().mean() - 0.5).abs() < 0.2  # about half the centroids are active
    km = METHODS.get("kmeans-features").Config(num_centroids=16)
    enc = KMeansEncoder(1, 3, 1, 16, km)
    enc.pixel_std.fill_(1.0)
    enc.zca_w.copy_(torch.eye(9))
    enc.centroids.copy_(c)
    imgs = torch.randn(2, 1, 8, 8)
    feats = enc(imgs)
    assert feats.shape == (2, 64) == (2, enc.feature_dim)
    # the four quadrants partition the 6x6 positions: their sums add up to the sum over all positions
    patches = enc.patches(imgs)
    total = triangle(patches.reshape(-1, 9), c).view(2, 36, 16).sum(1)
    assert torch.allclose(feats.view(2, 4, 16).sum(1), total, rtol=1e-4, atol=1e-3)


def test_kmeans_features_fit_fast_and_live_in_the_checkpoint(digits):
    method = build("kmeans-features", size=8)
    assert method.trained_by == "fit" and method.views == ()
    start = time.process_time()
    method.fit(digits.train_x, *digits.mean_std())
    x = normalised(digits, digits.test_x)
    feats = method.encoder(x)
    assert time.process_time() - start < 10  # ~1 s of CPU measured; the budget is 3 s wall on 2 cores
    assert feats.shape == (len(x), 4 * 128) and torch.isfinite(feats).all() and (feats >= 0).all()
    fresh = build("kmeans-features", size=8)
    assert not torch.allclose(fresh.encoder(x[:5]), feats[:5])
    fresh.load_state_dict(method.state_dict())
    assert torch.allclose(fresh.encoder(x), feats)


# --------------------------------------------------------------------------- through the pipeline


@pytest.mark.parametrize("name", OURS)
def test_each_method_runs_through_the_cli(name, tmp_path):
    from bench.cli import main

    protocols = "knn" if name == "kmeans-features" else ""
    code = main(["run", "--method", name, "--dataset", "digits", "--epochs", "1", "--batch-size", "128",
                 "--out", str(tmp_path), "--protocols", protocols, "--no-progress"])
    assert code == 0
    (path,) = tmp_path.glob("runs/adhoc/*/record.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["method_config"] == json.loads(json.dumps(rec["method_config"]))
    if name == "kmeans-features":
        assert rec["metrics"]["knn"]["top1"] > 0.85  # Coates & Ng features separate the digits
        assert (path.parent / "checkpoint.pt").exists()  # fitted state is saved like a trained model's
    else:
        r = rec["metrics"]["reconstruction"]
        assert r["split"] == "test" and 0 < r["mse"] < 2 and r["space"] == "normalised pixels"
        assert rec["training"]["steps"] == 1437 // 128


@pytest.mark.parametrize("name", ["mae", "autoencoder"])
def test_training_step_under_bf16_autocast(name):
    """The loop trains under bf16 autocast on CUDA; CPU autocast exercises the same dtype mixing."""
    method = build(name, size=28, backbone_args={"widths": (8, 8, 8, 8)})
    x = torch.randn(8, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_step(Batch([x], x, torch.zeros(8, dtype=torch.long), torch.arange(8)))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
