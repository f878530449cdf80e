"""The vit backbone: shapes for 8, 28 and 32 px inputs, both poolings, patch subsets, and the patch helpers."""

from __future__ import annotations

import pytest
import torch

from bench.core.errors import UsageError
from methods.backbones import BACKBONES, build_backbone
from methods.vit import ViT, patchify, random_masking, sincos_2d, unpatchify


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 2 OpenMP threads on 2 busy cores only spin-wait
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("channels,size,grid", [(1, 28, 4), (3, 32, 4), (1, 8, 4)])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_shapes_for_each_input_size(channels, size, grid, pool):
    net = build_backbone("vit", channels, size, pool=pool, depth=1)
    assert isinstance(net, ViT) and "vit" in BACKBONES
    assert net.grid == grid and net.num_patches == grid * grid and net.patch_size * grid == size
    x = torch.randn(3, channels, size, size)
    assert net(x).shape == (3, net.feature_dim) == (3, 128)
    assert net.forward_tokens(x).shape == (3, 1 + grid * grid, 128)
    keep = torch.stack([torch.randperm(grid * grid)[:5] for _ in range(3)])
    assert net.forward_tokens(x, keep).shape == (3, 6, 128)


def test_pooling_reads_the_cls_token_or_the_patch_mean():
    torch.manual_seed(0)
    cls_net = build_backbone("vit", 1, 28, pool="cls", depth=1).eval()
    mean_net = build_backbone("vit", 1, 28, pool="mean", depth=1).eval()
    mean_net.load_state_dict(cls_net.state_dict())
    x = torch.randn(2, 1, 28, 28)
    tokens = cls_net.forward_tokens(x)
    assert torch.allclose(cls_net(x), tokens[:, 0], atol=1e-6)
    assert torch.allclose(mean_net(x), tokens[:, 1:].mean(1), atol=1e-6)
    assert not torch.allclose(cls_net(x), mean_net(x))


def test_a_patch_subset_is_what_the_encoder_sees():
    """Tokens of kept patches depend on those patches only: changing a dropped patch changes nothing."""
    torch.manual_seed(0)
    net = build_backbone("vit", 1, 28, depth=2).eval()
    x = torch.randn(1, 1, 28, 28)
    keep = torch.tensor([[0, 5, 10]])
    y = x.clone()
    y[..., 7:14, 7:14] += 5.0  # patch 5 (row 1, col 1): kept
    z = x.clone()
    z[..., 21:28, 21:28] += 5.0  # patch 15: dropped
    base = net.forward_tokens(x, keep)
    assert torch.allclose(net.forward_tokens(z, keep), base, atol=1e-6)
    assert not torch.allclose(net.forward_tokens(y, keep), base, atol=1e-3)


def test_widths_patch_choice_and_other_crop_sizes():
    small = build_backbone("vit", 3, 32, width="small", patch_size=4)
    assert (small.feature_dim, small.grid, len(small.blocks.layers)) == (256, 8, 6)
    net = build_backbone("vit", 1, 28, depth=1)
    assert net(torch.randn(2, 1, 14, 14)).shape == (2, 128)  # DINO's local crops: a 2x2 grid
    with pytest.raises(UsageError, match="width"):
        build_backbone("vit", 1, 28, width="huge")
    with pytest.raises(UsageError, match="divide"):
        build_backbone("vit", 1, 28, patch_size=5)
    with pytest.raises(UsageError, match="pool"):
        build_backbone("vit", 1, 28, pool="max")


def test_sincos_positions_are_distinct_and_interpolate_over_the_base_grid():
    pos = sincos_2d(4, 4, 64)
    assert pos.shape == (16, 64)
    assert torch.cdist(pos, pos).add(torch.eye(16)).min() > 0.1
    # a 2x2 grid spread over the 4x4 range lands on the 4x4 corners
    assert torch.allclose(sincos_2d(2, 2, 64, (4, 4)), pos[[0, 3, 12, 15]], atol=1e-5)


def test_patchify_round_trips_and_orders_patches_row_major():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 8)
    assert p.shape == (2, 16, 3 * 64)
    assert torch.equal(unpatchify(p, 8, (32, 32)), x)
    assert torch.equal(p[:, 1].view(2, 3, 8, 8), x[:, :, :8, 8:16])


@pytest.mark.parametrize("length,ratio", [(16, 0.75), (49, 0.75), (64, 0.75), (16, 0.5), (49, 0.9)])
def test_random_masking_keeps_exactly_the_requested_share(length, ratio):
    keep_idx, mask = random_masking(64, length, ratio, generator=torch.Generator().manual_seed(0))
    kept = int(length * (1 - ratio))
    assert keep_idx.shape == (64, kept) and mask.shape == (64, length)
    assert (mask.sum(1) == length - kept).all()  # every row hides the same number
    assert abs((length - kept) / length - ratio) < 1 / length
    assert not mask.gather(1, keep_idx).any()  # kept patches are exactly the unmasked ones
    assert all(len(set(row.tolist())) == kept for row in keep_idx)
    # different rows get different masks, and the same generator seed gives the same masks
    assert len({tuple(sorted(r.tolist())) for r in keep_idx}) > 32
    again, _ = random_masking(64, length, ratio, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, keep_idx)


def test_masking_rejects_ratios_that_leave_nothing_visible():
    with pytest.raises(ValueError, match="ratio"):
        random_masking(2, 16, 1.0)
