"""The generation decoder (bench/generation/decoder.py): it reproduces raw pixels it never saw, and refuses old files."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from bench.core.errors import UsageError
from bench.generation.decoder import DecoderSettings, load_decoder, train_decoder
from bench.store import save_checkpoint

MEAN, STD = (0.2,), (0.3,)


def _rectangles(n: int, seed: int) -> torch.Tensor:
    """n 12x12 uint8 images, each one bright rectangle of random size and place on black: edges a blur would lose."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 12, 12, dtype=torch.uint8)
    for img in images:
        top, left = torch.randint(0, 8, (2,), generator=g).tolist()
        h, w = torch.randint(2, 12 - max(top, left), (2,), generator=g).tolist()
        img[0, top:top + h, left:left + w] = int(torch.randint(128, 256, (1,), generator=g))
    return images


def test_decoder_reproduces_held_out_raw_pixels(tmp_path):
    """Raw pixels are the ceiling of the generation table: the decoder must give them back, not a blur of them."""
    train, test = _rectangles(400, seed=0), _rectangles(50, seed=1)
    settings = DecoderSettings(epochs=2, batch_size=50)
    dec = train_decoder(tmp_path / "d.pt", train.flatten(1).float(), train, MEAN, STD, settings, log=lambda _: None)
    with torch.no_grad():
        drawn = dec(test.flatten(1).float()) * STD[0] + MEAN[0]
    mse = float(((drawn.clamp(0, 1) - test.float() / 255) ** 2).mean())
    blank = float(((test.float() / 255 - train.float().mean() / 255) ** 2).mean())
    assert mse < 1e-3 < blank / 20, (mse, blank)


@pytest.mark.parametrize("old", [{"width": 8}, {"arch": "another"}], ids=["no-arch-field", "other-arch"])
def test_a_decoder_file_from_another_architecture_is_refused(old, tmp_path):
    settings = asdict(DecoderSettings()) | old
    settings = {k: v for k, v in settings.items() if k != "arch"} if "arch" not in old else settings
    path = tmp_path / "decoder.pt"
    save_checkpoint(path, {"model": {}, "epoch": settings["epochs"], "settings": settings})
    with pytest.raises(UsageError, match="older decoder; retrain it: repbench decode --restart"):
        load_decoder(path, 5, 1, 12)
    with pytest.raises(UsageError, match="other settings"):
        train_decoder(path, torch.randn(8, 5), _rectangles(8, 0), MEAN, STD, DecoderSettings(), log=lambda _: None)
