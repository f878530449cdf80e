"""The generation protocol: what a frozen embedding keeps, measured on decoded images.

- ``reconstruction``: held-out test images (``per_class`` per class, the first ones of each class) are encoded,
  decoded by the run's decoder, and scored by pixel MSE (images in [0, 1]) and by the fixed classifier's top-1 on
  the decoded images (``decoded_top1``; ``real_top1`` is the same classifier on the same real images);
- ``text_to_image`` (CLIP runs): ``samples`` images are drawn from each class's prompt (the run's caption
  template with the class name) through the prior and the decoder; ``top1`` is the fraction the fixed classifier
  assigns to the prompt's class (chance is 1 / classes).
Each result carries its settings, the decoder's and the classifier's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from bench.generation.classifier import FixedClassifier
from bench.generation.decoder import DecoderSettings, FeatureDecoder
from bench.generation.prior import TextPrior
from bench.generation.runs import Run

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class ProtocolSettings:
    per_class: int = 100
    samples: int = 20
    seed: int = 0


def held_out(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first ``per_class`` test images of each class, in index order."""
    keep = [(labels == c).nonzero().flatten()[:per_class] for c in labels.unique()]
    return torch.cat(keep).sort().values


@torch.no_grad()
def to_pixels(dec: FeatureDecoder, feats: torch.Tensor, mean, std) -> torch.Tensor:
    """Decoded images in [0, 1], (N, C, H, W)."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return torch.cat([dec(feats[i:i + 512]) * s + m for i in range(0, len(feats), 512)]).clamp(0, 1)


def reconstruction(run: Run, dec: FeatureDecoder, clf: FixedClassifier, settings: ProtocolSettings,
                   dec_settings: DecoderSettings) -> dict:
    idx = held_out(run.ds.test_y, settings.per_class)
    real, labels = run.ds.test_x[idx].float() / 255, run.ds.test_y[idx]
    decoded = to_pixels(dec, run.features(run.ds.test_x[idx]), *run.ds.mean_std())
    return {"mse": float(((decoded - real) ** 2).mean()), "decoded_top1": clf.accuracy(decoded, labels),
            "real_top1": clf.accuracy(real, labels), "n_test": len(idx), "per_class": settings.per_class,
            "split": "test", "pixels": "[0, 1]", "decoder": asdict(dec_settings), "classifier": clf.info}


def prompts(run: Run) -> list[str]:
    template = vars(run.method.cfg).get("fallback_template", DEFAULT_TEMPLATE)
    return [template.format(name) for name in run.ds.classes]


@torch.no_grad()
def sample_images(run: Run, dec: FeatureDecoder, prior: TextPrior, text: str, n: int, seed: int) -> torch.Tensor:
    """n images in [0, 1] drawn for one prompt: text embedding -> prior sample -> decoder."""
    g = torch.Generator().manual_seed(seed)
    emb = run.method.encode_text([text])
    return to_pixels(dec, prior.sample(emb, n, g), *run.ds.mean_std())


def text_to_image(run: Run, dec: FeatureDecoder, prior: TextPrior, clf: FixedClassifier,
                  settings: ProtocolSettings) -> dict:
    per_class = []
    for c, text in enumerate(prompts(run)):
        imgs = sample_images(run, dec, prior, text, settings.samples, settings.seed + c)
        per_class.append(float((clf.predict(imgs) == c).float().mean()))
    return {"top1": sum(per_class) / len(per_class), "per_class_top1": dict(zip(run.ds.classes, per_class, strict=True)),
            "prompts": prompts(run), "samples_per_prompt": settings.samples, "seed": settings.seed,
            "chance": 1 / len(per_class), "prior": "low-rank Gaussian (bench/generation/prior.py)",
            "classifier": clf.info}
