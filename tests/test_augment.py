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


def test_batched_crop_equals_kornias_crop_of_the_same_boxes():
    from bench.augment import BatchedResizedCrop

    x = torch.rand(32, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    for size in (20, 8):  # global and multi-crop local views
        crop = BatchedResizedCrop(size, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(1)
        ours = crop(x)
        torch.manual_seed(1)  # the same global draws give kornia the same boxes
        reference = crop.sampler(x, params=crop.sampler.forward_parameters(x.shape))
        assert ours.shape == reference.shape == (32, 3, size, size)
        assert torch.allclose(ours, reference, atol=1e-5)
        assert not torch.allclose(ours[0], ours[1])  # boxes differ per sample
