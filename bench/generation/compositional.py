"""Compositional text-to-image on ``shapes``: draw (shape, colour) pairs that training never showed, score both words.

The ``shapes`` training split holds out one (shape, colour) pair per shape and per colour (bench/data/captions.py
``HELD_OUT``); its test split holds only those pairs. A CLIP run's prior and decoder draw ``samples`` images for each
of the 36 pairs from the prompt ``PROMPT`` (one of the dataset's own caption templates, the one naming just the two
scored attributes), and every image is scored on
- shape: the dataset's fixed shape classifier (bench/generation/shape_classifier.py: trained once on the silhouettes
  of real training images, which never show a held-out pair; its accuracy on the real held-out test images is
  recorded);
- colour: the nearest of the dataset's six colours to the image's foreground (``colour_of``).
Held-out pairs are the measurement; the 30 seen pairs are the reference (what the generator draws for pairs it was
trained on); ``real`` scores the real held-out test images with the same two scorers (the scorers' ceiling).
Chance: a generator that ignores the prompt gets a shape and a colour right 1/6 of the time, both 1/36.
"""

from __future__ import annotations

import torch

from bench.data.captions import COLOUR_RGB, COLOURS, HELD_OUT, SHAPE_TEMPLATES, SHAPES
from bench.generation.classifier import FixedClassifier
from bench.generation.decoder import FeatureDecoder
from bench.generation.prior import TextPrior
from bench.generation.protocol import ProtocolSettings, sample_images
from bench.generation.runs import Run
from bench.generation.shape_classifier import MIN_CHROMA, chroma_vectors

DATASET = "shapes"
PROMPT = SHAPE_TEMPLATES[1]  # "a {colour} {shape}."
# Chroma direction of each palette colour: its RGB minus its smallest channel, unit length.
_PALETTE = torch.nn.functional.normalize(torch.from_numpy(COLOUR_RGB - COLOUR_RGB.min(1, keepdims=True)), dim=1)


def applies(run: Run) -> bool:
    return run.ds.name == DATASET


def pairs() -> list[tuple[int, int]]:
    """Every (shape, colour) index pair, in the dataset's combination order."""
    return [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]


def held_out_pairs() -> set[tuple[int, int]]:
    return {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELD_OUT}


def pair_name(shape: int, colour: int) -> str:
    return f"{COLOURS[colour]} {SHAPES[shape]}"


def prompt(shape: int, colour: int) -> str:
    return PROMPT.format(colour=COLOURS[colour], shape=SHAPES[shape])


def colour_of(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> the nearest palette colour of each image's foreground (N,), -1 where none.

    Foreground: backgrounds are grey (equal channels), shapes saturated, so the foreground is the pixels whose chroma
    (max - min channel) is at least half the image's largest and at least MIN_CHROMA. Colour: a pixel mixing a shape
    colour with any grey (as a blurred edge does) has RGB minus its smallest channel proportional to that colour's
    own, so the foreground's summed chroma vectors are matched to the palette's by cosine, whatever the background.
    """
    chroma_vec = chroma_vectors(images)
    chroma = chroma_vec.max(1).values  # (N, H, W)
    peak = chroma.flatten(1).max(1).values.view(-1, 1, 1)
    fg = (chroma >= 0.5 * peak) & (chroma >= MIN_CHROMA)
    summed = (chroma_vec * fg.unsqueeze(1)).sum((2, 3))
    nearest = (torch.nn.functional.normalize(summed, dim=1) @ _PALETTE.T).argmax(1)
    return torch.where(fg.flatten(1).any(1), nearest, -1)


def score(images: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor, clf: FixedClassifier) -> dict:
    """Fractions of images whose shape, colour, and both match the targets (N,)."""
    ok_shape, ok_colour = clf.predict(images) == shape, colour_of(images) == colour
    return {"shape": float(ok_shape.float().mean()), "colour": float(ok_colour.float().mean()),
            "both": float((ok_shape & ok_colour).float().mean()), "n": len(images)}


def summary(per_pair: dict[str, dict]) -> dict:
    """Mean over pairs (each pair weighs the same), with the per-pair scores."""
    keys = ("shape", "colour", "both")
    return {**{k: sum(p[k] for p in per_pair.values()) / len(per_pair) for k in keys}, "pairs": len(per_pair),
            "per_pair": per_pair}


def score_generator(draw, clf: FixedClassifier, samples: int) -> dict[str, dict]:
    """``draw(shape, colour, n, seed)`` -> n images in [0, 1]; scored per pair, held-out and seen pairs apart."""
    held, out = held_out_pairs(), {"held_out": {}, "seen": {}}
    for i, (s, c) in enumerate(pairs()):
        imgs = draw(s, c, samples, i)
        full = torch.full((len(imgs),), s), torch.full((len(imgs),), c)
        out["held_out" if (s, c) in held else "seen"][pair_name(s, c)] = score(imgs, *full, clf)
    return {k: summary(v) for k, v in out.items()}


def real_held_out(run: Run, clf: FixedClassifier) -> dict:
    """The two scorers on the run's real test images (all of held-out pairs): the ceiling a perfect generator gets."""
    attrs = run.ds.extras["attributes"]["test"]
    return score(run.ds.test_x.float() / 255, attrs["shape"], attrs["colour"], clf)


def compositional(run: Run, dec: FeatureDecoder, prior: TextPrior, clf: FixedClassifier,
                  settings: ProtocolSettings) -> dict:
    def draw(s: int, c: int, n: int, i: int) -> torch.Tensor:
        return sample_images(run, dec, prior, prompt(s, c), n, settings.seed + i)

    scored = score_generator(draw, clf, settings.samples)
    return {**scored, "real_held_out": real_held_out(run, clf),
            "chance": {"shape": 1 / len(SHAPES), "colour": 1 / len(COLOURS), "both": 1 / (len(SHAPES) * len(COLOURS))},
            "prompt_template": PROMPT, "samples_per_prompt": settings.samples, "seed": settings.seed,
            "colour_rule": f"nearest palette colour by chroma direction of the foreground (chroma >= half the "
                           f"image's peak and >= {MIN_CHROMA}); none found counts as wrong",
            "prior": "low-rank Gaussian (bench/generation/prior.py)", "classifier": clf.info}


def line(result: dict) -> str:
    """One line for the log: held-out and seen pairs' shape / colour / both accuracies."""
    h, s, c = result["held_out"], result["seen"], result["chance"]
    return (f"compositional: held-out pairs shape {h['shape']:.0%} colour {h['colour']:.0%} both {h['both']:.0%}; "
            f"seen pairs {s['shape']:.0%} / {s['colour']:.0%} / {s['both']:.0%} "
            f"(chance {c['shape']:.0%} / {c['colour']:.0%} / {c['both']:.0%})")
