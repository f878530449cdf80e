"""The generation pictures: test inputs and each run's reconstruction of them; a CLIP run's samples per class prompt."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from bench.data.captions import COLOURS, SHAPES
from bench.generation import compositional
from bench.generation.decoder import DECODER_FILE, load_decoder
from bench.generation.pictures import first_of_each_class, grid_png
from bench.generation.prior import PRIOR_FILE, load_prior
from bench.generation.protocol import prompts, sample_images, to_pixels
from bench.generation.runs import Run, load_run
from bench.runner import read_run_config
from bench.store import atomic_write_bytes
from methods.base import TextTower

RECONSTRUCTIONS = "generation-reconstructions.png"
TEXT_TO_IMAGE = "generation-text-to-image.png"
COMPOSITIONAL = "generation-compositional.png"


def decoder_of(run: Run):
    return load_decoder(run.path / DECODER_FILE, run.method.encoder.feature_dim, run.ds.channels, run.ds.image_size)


def reconstructions(run_dirs: list[Path], data_root: str | None) -> bytes:
    """Row 1: the first test image of each class; then one row per run: its decoder's image from its embedding."""
    rows: dict[str, torch.Tensor] = {}
    for d in run_dirs:
        run = load_run(d, data_root)
        inputs, decoded = reconstruction_rows(run, decoder_of(run))
        rows.setdefault("input", inputs)
        rows[f"{run.cfg.method}/{run.cfg.backbone} s{run.cfg.seed}"] = decoded
    return grid_png(rows, "held-out test images decoded from each representation's embedding")


def reconstruction_rows(run: Run, dec) -> tuple[torch.Tensor, torch.Tensor]:
    """The first test image of each class in [0, 1], and the decoder's image of each from its embedding."""
    idx = first_of_each_class(run.ds.test_y)
    return run.ds.test_x[idx].float() / 255, to_pixels(dec, run.features(run.ds.test_x[idx]), *run.ds.mean_std())


def prompt_rows(run: Run, dec, n: int) -> dict[str, torch.Tensor]:
    """One row per class prompt: n images drawn through the run's prior and decoder."""
    prior = load_prior(run.path / PRIOR_FILE, run.method.encoder.feature_dim)
    return {text: sample_images(run, dec, prior, text, n, c) for c, text in enumerate(prompts(run))}


def run_picture(run_dir: Path, data_root: str | None, n: int = 6) -> bytes:
    """One run's picture for its report page: inputs over their reconstructions, then for a run with a text tower
    (CLIP: it has a prior) n samples per class prompt."""
    run = load_run(run_dir, data_root)
    dec = decoder_of(run)
    inputs, decoded = reconstruction_rows(run, dec)
    rows = {"input": inputs, "decoded": decoded}
    if isinstance(run.method, TextTower):
        rows |= prompt_rows(run, dec, n)
    return palette_png(grid_png(rows, f"{run.cfg.method} seed {run.cfg.seed}: test images over their decoding"
                                      + (f", then {n} samples a prompt" if len(rows) > 2 else "")))


def text_samples(run_dir: Path, data_root: str | None, n: int = 8) -> bytes:
    """One row per class prompt: n images drawn through the run's prior and decoder."""
    run = load_run(run_dir, data_root)
    rows = prompt_rows(run, decoder_of(run), n)
    return grid_png(rows, f"text-to-image: {run.cfg.method} seed {run.cfg.seed} prior + decoder, {n} samples a prompt")


def compositional_samples(run_dir: Path, data_root: str | None, n: int = 8) -> bytes:
    """shapes: one row per held-out (shape, colour) prompt, then two seen ones for reference; n samples each."""
    run = load_run(run_dir, data_root)
    dec, prior = decoder_of(run), load_prior(run_dir / PRIOR_FILE, run.method.encoder.feature_dim)
    held = [p for p in compositional.pairs() if p in compositional.held_out_pairs()]
    # Seen references beside the first held-out pair (blue circle): its shape in another colour, its colour on another shape.
    seen = [(held[0][0], (held[0][1] + 1) % len(COLOURS)), ((held[0][0] + 1) % len(SHAPES), held[0][1])]
    rows = {("seen: " if p in seen else "") + compositional.prompt(*p): sample_images(
        run, dec, prior, compositional.prompt(*p), n, i) for i, p in enumerate(held + seen)}
    png = grid_png(rows, f"held-out pairs: {run.cfg.method} seed {run.cfg.seed} prior + decoder, {n} samples a prompt")
    return palette_png(png)


def palette_png(png: bytes) -> bytes:
    """The PNG in 256 adaptive colours: an RGB grid of this size drops from about 230 KB to about 80 KB to commit."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(out, "PNG", optimize=True)
    return out.getvalue()


def write_figures(run_dirs: list[Path], data_root: str | None, out: Path, clip_runs: list[Path]) -> list[Path]:
    written = [out / RECONSTRUCTIONS]
    atomic_write_bytes(written[0], reconstructions(run_dirs, data_root))
    if clip_runs:
        written.append(out / TEXT_TO_IMAGE)
        atomic_write_bytes(written[1], text_samples(clip_runs[0], data_root))
        if read_run_config(clip_runs[0]).dataset == compositional.DATASET:
            written.append(out / COMPOSITIONAL)
            atomic_write_bytes(written[2], compositional_samples(clip_runs[0], data_root))
    return written
