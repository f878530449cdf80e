"""Feature extraction and the on-disk cache keyed by (checkpoint, dataset, split, layer)."""

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.errors import UsageError
from bench.features import cache_path, cached_features, extract, feature_module


class Counter:
    def __init__(self, x, y):
        self.calls, self.x, self.y = 0, x, y

    def __call__(self):
        self.calls += 1
        return self.x, self.y


def test_cache_hit_miss_and_key(tmp_path):
    x, y = torch.randn(10, 4), torch.arange(10)
    compute = Counter(x, y)
    key = dict(checkpoint="run-a", dataset="digits", split="train", layer="backbone")
    a = cached_features(tmp_path, compute, **key)
    b = cached_features(tmp_path, compute, **key)
    assert compute.calls == 1 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert b[0].dtype == torch.float32 and b[1].dtype == torch.int64
    for change in ({"checkpoint": "run-b"}, {"split": "test"}, {"layer": "head"}, {"dataset": "fashion-mnist"}):
        cached_features(tmp_path, compute, **{**key, **change})
    assert compute.calls == 5
    assert len(list(tmp_path.glob("*.npz"))) == 5 and not list(tmp_path.glob(".*tmp"))


def test_checkpoint_file_is_keyed_by_content(tmp_path):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"weights v1")
    first = cache_path(tmp_path, ckpt, "digits", "train", "backbone")
    ckpt.write_bytes(b"weights v2")  # retrained into the same path: the old features must not be reused
    assert cache_path(tmp_path, ckpt, "digits", "train", "backbone") != first


def test_damaged_cache_entry_is_recomputed(tmp_path):
    compute = Counter(torch.randn(5, 3), torch.arange(5))
    key = dict(checkpoint="r", dataset="d", split="train", layer="backbone")
    cached_features(tmp_path, compute, **key)
    cache_path(tmp_path, "r", "d", "train", "backbone").write_bytes(b"truncated")
    x, _ = cached_features(tmp_path, compute, **key)
    assert compute.calls == 2 and x.shape == (5, 3)
    with np.load(cache_path(tmp_path, "r", "d", "train", "backbone")) as z:
        assert z["x"].shape == (5, 3)


def test_unknown_layer_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown feature layer"):
        cached_features(tmp_path, Counter(None, None), checkpoint="r", dataset="d", split="train", layer="neck")


def test_extract_is_eval_mode_and_restores_training():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    net.train()
    images = torch.randint(0, 256, (7, 1, 2, 2), dtype=torch.uint8)
    a = extract(net, images, (0.5,), (0.25,), batch_size=3)
    assert net.training and a.shape == (7, 3)
    net.eval()
    expected = net((images.float() / 255 - 0.5) / 0.25)
    assert torch.allclose(a, expected, atol=1e-6)


def test_feature_module_picks_backbone_or_head():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 3)
            self.head = nn.Linear(3, 2)

        def embed(self, x):
            return self.head(self.encoder(x))

    m, x = M(), torch.randn(2, 4)
    assert feature_module(m, "backbone") is m.encoder
    assert feature_module(m, "head")(x).shape == (2, 2)
    with pytest.raises(UsageError):
        feature_module(m, "neck")


def test_extract_folds_batchnorm_without_changing_features():
    from methods.backbones import ConvNet

    torch.manual_seed(0)
    net = ConvNet(1, (4, 8))
    with torch.no_grad():  # BN statistics away from their (0, 1) defaults, so folding has work to do
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
    images = torch.randint(0, 256, (9, 1, 8, 8), dtype=torch.uint8)
    a = extract(net, images, (0.5,), (0.25,), batch_size=4)
    assert net.training and all(p.is_contiguous() for p in net.parameters())  # the encoder itself is untouched
    net.eval()
    expected = net((images.float() / 255 - 0.5) / 0.25)
    assert torch.allclose(a, expected, atol=1e-5, rtol=1e-4)
