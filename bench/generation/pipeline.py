"""What the commands do: train a run's decoder (and a CLIP run's prior), score them, draw from a prompt."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.core.errors import UsageError
from bench.generation import compositional
from bench.generation.classifier import fixed_classifier
from bench.generation.decoder import DECODER_FILE, DecoderSettings, load_decoder, train_decoder
from bench.generation.prior import PRIOR_FILE, check_text_tower, load_prior, train_captions, train_prior
from bench.generation.protocol import DEFAULT_TEMPLATE, ProtocolSettings, reconstruction, sample_images, text_to_image
from bench.generation.runs import Run, load_run
from bench.generation.shape_classifier import shape_classifier
from bench.runner import read_run_config
from bench.store import write_json
from methods import METHODS
from methods.base import TextTower

RESULT_FILE = "generation.json"


def decode_run(run_dir: Path, data_root: str | None, settings: DecoderSettings, protocol: ProtocolSettings,
               resume: bool = True, log=print) -> dict:
    """Train (or resume) the decoder and, for CLIP, the prior; score them; write generation.json beside the run."""
    run = load_run(run_dir, data_root)
    # shapes: the colour-blind shape classifier, so that a held-out pair's shape is scored apart from its colour.
    clf = (shape_classifier if compositional.applies(run) else fixed_classifier)(run.ds, data_root, log)
    t0 = time.perf_counter()
    log(f"{run.name}: {run.cfg.method} features of {len(run.ds.train_y)} training images")
    train_feats = run.features(run.ds.train_x)
    # The decoder's seed is the run's: the seeds' spread then covers the decoder too (raw pixels vary by it alone).
    settings = replace(settings, seed=run.cfg.seed)
    dec = train_decoder(run_dir / DECODER_FILE, train_feats, run.ds.train_x, *run.ds.mean_std(), settings, resume, log)
    result = {"run_id": run.name, "method": run.cfg.method, "backbone": run.cfg.backbone, "dataset": run.cfg.dataset,
              "seed": run.cfg.seed, "feature_dim": train_feats.shape[1],
              "reconstruction": reconstruction(run, dec, clf, protocol, settings)}
    if isinstance(run.method, TextTower):
        prior = fit_prior(run, train_feats, log)
        result["text_to_image"] = text_to_image(run, dec, prior, clf, protocol)
        if compositional.applies(run):
            result["compositional"] = compositional.compositional(run, dec, prior, clf, protocol)
            log(f"{run.name}: {compositional.line(result['compositional'])}")
    result["train_s"] = round(time.perf_counter() - t0, 1)
    write_json(run_dir / RESULT_FILE, result)
    return result


@torch.no_grad()
def caption_embeddings(run: Run) -> torch.Tensor:
    captions = train_captions(run.method, run.ds, vars(run.method.cfg).get("fallback_template", DEFAULT_TEMPLATE))
    unique = sorted(set(captions))
    emb = run.method.encode_text(unique)
    where = {c: i for i, c in enumerate(unique)}
    return emb[torch.tensor([where[c] for c in captions])]


def fit_prior(run: Run, train_feats: torch.Tensor, log=print):
    log(f"{run.name}: prior from the text embedding to the image features ({len(train_feats)} caption/image pairs)")
    return train_prior(run.path / PRIOR_FILE, caption_embeddings(run), train_feats, log)


def generate(run_dir: Path, data_root: str | None, text: str, n: int, seed: int) -> tuple[Run, torch.Tensor]:
    """n images in [0, 1] for ``text`` from a CLIP run's prior and decoder (both trained by repbench decode)."""
    check_text_tower(METHODS.get(read_run_config(run_dir).method), run_dir)
    for name in (DECODER_FILE, PRIOR_FILE):
        if not (run_dir / name).is_file():
            raise UsageError(f"no {name} in {run_dir}; train it first: repbench decode --run {run_dir}")
    run = load_run(run_dir, data_root)
    dim = run.method.encoder.feature_dim
    dec = load_decoder(run_dir / DECODER_FILE, dim, run.ds.channels, run.ds.image_size)
    prior = load_prior(run_dir / PRIOR_FILE, dim)
    return run, sample_images(run, dec, prior, text, n, seed)
