"""The papers' linear probe (SGD through the frozen backbone with augmentation), on digits."""

import math

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.linear_paper import PAPER_RECIPES, linear_probe_paper
from methods.backbones import build_backbone


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def encoder(seed=0):
    torch.manual_seed(seed)
    return build_backbone("convnet", 1, 8, widths=(16, 32))


def linear_encoder(seed=0):
    """Random linear features of the pixels: linearly informative, cheap, BatchNorm inside."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU())


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("recipe", ["mae", "moco"])
def test_backbone_stays_frozen(digits, recipe):
    enc = encoder()
    enc.train()
    before = snapshot(enc)
    out = linear_probe_paper(enc, digits, recipe=recipe, epochs=2, batch_size=128)["linear_paper"]
    after = snapshot(enc)
    # Weights and BatchNorm running statistics untouched; mode and requires_grad restored.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert out["recipe"] == recipe and out["head_bn"] == PAPER_RECIPES[recipe].head_bn
    assert out["steps"] == 2 * (len(digits.train_y) // 128) and math.isfinite(out["final_loss"])
    assert out["augment"] == "RandomResizedCrop(0.08-1) + flip" and not out["lr_overridden"]


@pytest.mark.parametrize("recipe,lr", [("moco", None), ("mae", 100.0)])
def test_head_learns(digits, recipe, lr):
    # MoCo's own lr (30); MAE's base lr 0.1 assumes batch 16384 x 90 epochs (LARS moves the weights by
    # lr * 1e-3 of their norm per step), so a 88-step run needs a larger base rate. RandomResizedCrop's
    # 8% crops of an 8x8 digit are a few pixels, so the crop is off here; chance is 0.1.
    out = linear_probe_paper(linear_encoder(), digits, recipe=recipe, epochs=8, batch_size=128, lr=lr,
                             crop_scale=(1.0, 1.0))["linear_paper"]
    assert out["top1"] > 0.5, out
    assert out["lr_overridden"] == (lr is not None)


def test_mae_recipe_settings_and_seed_reproducibility(digits):
    a = linear_probe_paper(encoder(), digits, recipe="mae", epochs=2, batch_size=256, seed=3)["linear_paper"]
    b = linear_probe_paper(encoder(), digits, recipe="mae", epochs=2, batch_size=256, seed=3)["linear_paper"]
    assert a["top1"] == b["top1"] and a["final_loss"] == b["final_loss"]
    assert a["optimizer"] == "lars" and a["lr"] == pytest.approx(0.1 * 256 / 256) and a["schedule"] == "cosine"
    assert a["selection"] == "last epoch" and a["seed"] == 3


def test_unknown_recipe(digits):
    with pytest.raises(ValueError, match="unknown paper recipe"):
        linear_probe_paper(encoder(), digits, recipe="simclr")
