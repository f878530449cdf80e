import pytest
import torch

from bench.augment import Augmenter, ViewConfig


def _aug(views, channels=1, size=16):
    return Augmenter(views, channels, size, (0.5,) * channels, (0.25,) * channels)


def test_views_are_per_sample_random():
    torch.manual_seed(0)
    x = torch.full((64, 1, 16, 16), 0, dtype=torch.uint8)
    x[:, :, 4:12, 4:12] = 255  # the same image 64 times: any difference comes from per-sample parameters
    v0, v1 = _aug((ViewConfig(), ViewConfig()))(x)
    assert v0.shape == v1.shape == (64, 1, 16, 16)
    flat = v0.flatten(1)
    distinct = torch.cdist(flat, flat)[~torch.eye(64, dtype=torch.bool)]
    assert (distinct > 1e-3).float().mean() > 0.9, "a batch shares augmentation parameters"
    assert not torch.allclose(v0, v1)


def test_view_size_and_normalisation():
    # A smooth image, so that any sensible resampling (kornia's vs interpolate's) agrees.
    ramp = torch.linspace(0, 255, 32)
    x = (ramp.view(1, 1, 1, 32) * 0.5 + ramp.view(1, 1, 32, 1) * 0.5).expand(8, 3, 32, 32).to(torch.uint8)
    aug = _aug((ViewConfig(size=12, jitter_p=0, gray_p=0, flip_p=0, scale=(1.0, 1.0), ratio=(1.0, 1.0)),), 3, 32)
    (v,) = aug(x)
    assert v.shape == (8, 3, 12, 12)
    expected = torch.nn.functional.interpolate(x.float() / 255, size=12, mode="bilinear", align_corners=False)
    # scale (1, 1) is the whole image: the view is a resize of it, normalised by mean 0.5 / std 0.25
    assert torch.allclose(v, (expected - 0.5) / 0.25, atol=0.15)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [20, 8])  # global and multi-crop local views
def test_batched_crop_equals_kornias_crop_of_the_same_boxes(channels, size):
    import kornia.augmentation as K

    from bench import augment_ops as ops
    from bench.augment import view_constants

    torch.manual_seed(1)
    x = torch.rand(32, channels, 20, 20)
    cfg = torch.tensor([view_constants(ViewConfig(scale=(0.08, 1.0)), channels, 20)] * 2)
    p = ops.draw(cfg, 32, 20, 20)
    ours = ops.resized_crop(x * 255, p["box"], p["flip"], size, 1 / 255)
    x0, y0, x1, y1 = p["box"].unbind(1)
    rrc = K.RandomResizedCrop((size, size))
    params = rrc.forward_parameters((64, channels, 20, 20))
    params["src"] = torch.stack([torch.stack(c, 1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1)
    reference = rrc(x.repeat(2, 1, 1, 1), params=params)
    reference = torch.where(p["flip"].view(-1, 1, 1, 1), reference.flip(-1), reference)
    assert ours.shape == reference.shape == (64, channels, size, size)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1])  # boxes differ per sample
    assert p["flip"].any() and not p["flip"].all()
