"""Captioned datasets for image-text methods (CLIP), built offline and deterministically from a seed.

- ``fashion-mnist-captions``: Fashion-MNIST images, each with a caption drawn from varied templates and
  per-class noun phrases, attributes and categories ("a pair of jeans with a waistband"), so the text is
  more than the label. Each class's own name (as ``classes`` spells it) is one of its noun phrases, so
  zero-shot prompts built from the class names use words the text tower has seen.
- ``shapes``: 32x32 RGB images of one shape with attributes (shape, colour, size, vertical position,
  background) and a caption describing them. The test split holds only (shape, colour) pairs that never
  occur in training (``HELD_OUT``), so zero-shot on it measures composition, not memorised pairs.
  ``classes`` (and ``train_y``/``test_y``) is the shape; ``extras["class_sets"]`` holds the zero-shot
  class definitions by shape, by colour and by combination (all 36 pairs: the 30 seen ones are the
  distractors), each with per-image labels for both splits.

Articles are never inflected ("a orange cross"): an "an" would leak the next word and differ from the
zero-shot prompts, which fill "a {}" naively. Positions are vertical only (top / middle / bottom) so that
a horizontal flip never makes a caption false.
Per-image labels in ``extras`` are aligned with the splits and follow them into per-class subsets.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.data import Dataset
from bench.data.fashion_mnist import fashion_mnist

CAPTION_SEED = 0

# --------------------------------------------------------------------------- fashion-mnist-captions

# (noun phrases, attributes, categories) per class, in Fashion-MNIST's label order: fashion_captions.toml.
FASHION_DESCRIPTIONS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = tuple(
    (tuple(c["nouns"]), tuple(c["attributes"]), tuple(c["categories"]))
    for c in tomllib.loads(Path(__file__).with_name("fashion_captions.toml").read_text())["class"])

FASHION_TEMPLATES = (
    "a photo of a {noun} {attr}.",
    "a {noun} {attr}",
    "a {noun}.",
    "a black and white picture of a {noun}, a kind of {cat}.",
    "product image: {noun}, {attr}.",
    "this {cat} is a {noun} {attr}.",
    "someone is selling a {noun}.",
    "a small greyscale photo of a {noun} {attr}, seen from the front.",
    "catalogue entry: {cat}, {noun}.",
    "a {cat} {attr}: a {noun}.",
)


def fashion_captions(labels: torch.Tensor, seed: int) -> list[str]:
    """One caption per label: template, noun phrase, attribute and category each drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    tpl, noun, attr, cat = (rng.integers(0, 1 << 30, n) for _ in range(4))
    out = []
    for i, y in enumerate(labels.tolist()):
        nouns, attrs, cats = FASHION_DESCRIPTIONS[y]
        t = FASHION_TEMPLATES[tpl[i] % len(FASHION_TEMPLATES)]
        out.append(t.format(noun=nouns[noun[i] % len(nouns)], attr=attrs[attr[i] % len(attrs)], cat=cats[cat[i] % len(cats)]))
    return out


def fashion_mnist_captions(data_root: str | None = None) -> Dataset:
    """Fashion-MNIST with a seeded caption per image (templates x synonyms x attributes); see module docstring."""
    ds = fashion_mnist(data_root)
    if [c.lower() for c in ds.classes] != [d[0][0] for d in FASHION_DESCRIPTIONS]:
        raise ValueError(f"unexpected Fashion-MNIST class order {ds.classes}")
    return replace(ds, name="fashion-mnist-captions", train_text=fashion_captions(ds.train_y, CAPTION_SEED),
                   test_text=fashion_captions(ds.test_y, CAPTION_SEED + 1),
                   extras={**ds.extras, "caption_seed": CAPTION_SEED})


# --------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
COLOUR_RGB = np.array([(220, 30, 30), (30, 170, 40), (40, 70, 230), (235, 215, 30), (150, 40, 190), (250, 140, 20)], np.float32)
BACKGROUNDS = ("black", "gray", "white")
BACKGROUND_LEVEL = np.array([15, 115, 230], np.float32)
SIZES = ("small", "large")
SIZE_WORDS = (("small", "tiny", "little"), ("large", "big"))
SIZE_RADIUS = ((3.5, 5.0), (7.0, 9.0))
POSITIONS = ("top", "middle", "bottom")
POSITION_WORDS = (("at the top", "near the top edge"), ("in the middle", "in the center"),
                  ("at the bottom", "near the bottom edge"))
POSITION_Y = (9.5, 15.5, 21.5)
# One (shape, colour) pair per shape and per colour never appears in training: every word is seen, some pairs are not.
HELD_OUT = (("circle", "blue"), ("square", "yellow"), ("triangle", "red"), ("diamond", "green"), ("cross", "orange"),
            ("ring", "purple"))
SHAPES_TRAIN, SHAPES_TEST, SHAPES_SIZE, SHAPES_SEED = 10_000, 2_000, 32, 0

SHAPE_TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background.",
    "a {colour} {shape}.",
    "{pos}, a {size} {colour} {shape}.",
    "there is a {colour} {shape} {pos}.",
    "a {bg} background with a {size} {colour} {shape}.",
    "a {size} {shape} coloured {colour}.",
    "a {shape} that is {colour}, {pos}.",
    "an image of a {colour} {shape} on {bg}.",
)
# Zero-shot prompts for shapes; the protocol falls back to its generic ones on datasets without this.
SHAPE_PROMPTS = ("a {}.", "a picture of a {}.", "there is a {}.", "an image of a {} on a background.", "a drawing of a {}.")


def _masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (N, S, S) masks. Shape: shape (N,) indices into SHAPES; dx (N, 1, S), dy (N, S, 1) offsets from
    each centre; r (N, 1, 1) radii."""
    dx, dy = np.broadcast_arrays(dx, dy)
    ax, ay, dist = np.abs(dx), np.abs(dy), np.sqrt(dx * dx + dy * dy)
    tests = {
        "circle": dist <= r,
        "square": np.maximum(ax, ay) <= 0.8 * r,
        "triangle": (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.6 * (dy + r)),  # apex up
        "diamond": ax + ay <= 1.15 * r,
        "cross": ((ax <= 0.35 * r) & (ay <= r)) | ((ay <= 0.35 * r) & (ax <= r)),
        "ring": (dist <= r) & (dist >= 0.55 * r),
    }
    out = np.zeros(dx.shape, bool)
    for i, name in enumerate(SHAPES):
        sel = shape == i
        out[sel] = tests[name][sel]
    return out


def render_shapes(shape, colour, size, pos, bg, rng: np.random.Generator, image_size: int = SHAPES_SIZE) -> torch.Tensor:
    """Draw one shape per image, vectorised over the batch. Shape: attribute arrays (N,) int -> (N, 3, S, S) uint8."""
    n = len(shape)
    r = np.array(SIZE_RADIUS, np.float32)[size]
    r = (r[:, 0] + rng.random(n, dtype=np.float32) * (r[:, 1] - r[:, 0]))[:, None, None]
    cx = (image_size / 2 - 0.5 + rng.uniform(-7, 7, n).astype(np.float32))[:, None, None]
    cy = (np.array(POSITION_Y, np.float32)[pos] + rng.uniform(-1.5, 1.5, n).astype(np.float32))[:, None, None]
    grid = np.arange(image_size, dtype=np.float32)
    mask = _masks(shape, grid[None, None, :] - cx, grid[None, :, None] - cy, r)
    fg = COLOUR_RGB[colour] + rng.uniform(-15, 15, (n, 3)).astype(np.float32)
    back = BACKGROUND_LEVEL[bg] + rng.uniform(-10, 10, n).astype(np.float32)
    img = np.where(mask[:, None], fg[:, :, None, None], back[:, None, None, None])
    img += 6 * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(np.rint(img, out=img), 0, 255, out=img)
    return torch.from_numpy(img.astype(np.uint8))


def shape_captions(shape, colour, size, pos, bg, rng: np.random.Generator) -> list[str]:
    n = len(shape)
    tpl, sw, pw = rng.integers(0, len(SHAPE_TEMPLATES), n), rng.integers(0, 6, n), rng.integers(0, 2, n)
    out = []
    for i in range(n):
        words = SIZE_WORDS[size[i]]
        fill = {"size": words[sw[i] % len(words)], "colour": COLOURS[colour[i]], "shape": SHAPES[shape[i]],
                "pos": POSITION_WORDS[pos[i]][pw[i]], "bg": BACKGROUNDS[bg[i]]}
        out.append(SHAPE_TEMPLATES[tpl[i]].format(**fill))
    return out


def shape_attributes(n: int, pairs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` attribute draws with (shape, colour) uniform over ``pairs`` (K, 2); the rest uniform."""
    pick = rng.integers(0, len(pairs), n)
    return {"shape": pairs[pick, 0], "colour": pairs[pick, 1], "size": rng.integers(0, len(SIZES), n),
            "pos": rng.integers(0, len(POSITIONS), n), "bg": rng.integers(0, len(BACKGROUNDS), n)}


def combination_names() -> list[str]:
    return [f"{c} {s}" for s in SHAPES for c in COLOURS]


def shapes(data_root: str | None = None, n_train: int = SHAPES_TRAIN, n_test: int = SHAPES_TEST,
           seed: int = SHAPES_SEED) -> Dataset:
    """Procedural shapes with captions; the test split holds only the held-out (shape, colour) pairs."""
    held = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELD_OUT}
    every = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n, pairs in (("train", n_train, [p for p in every if p not in held]), ("test", n_test, sorted(held))):
        attrs = shape_attributes(n, np.array(pairs), rng)
        images = render_shapes(attrs["shape"], attrs["colour"], attrs["size"], attrs["pos"], attrs["bg"], rng)
        text = shape_captions(attrs["shape"], attrs["colour"], attrs["size"], attrs["pos"], attrs["bg"], rng)
        splits[split] = (images, {k: torch.from_numpy(v.astype(np.int64)) for k, v in attrs.items()}, text)
    (train_x, tr, train_text), (test_x, te, test_text) = splits["train"], splits["test"]
    combo = {s: a["shape"] * len(COLOURS) + a["colour"] for s, a in (("train", tr), ("test", te))}
    class_sets = {
        "shape": {"classes": list(SHAPES), "train_y": tr["shape"], "test_y": te["shape"]},
        "colour": {"classes": list(COLOURS), "train_y": tr["colour"], "test_y": te["colour"]},
        "combination": {"classes": combination_names(), "train_y": combo["train"], "test_y": combo["test"]},
    }
    extras = {"class_sets": class_sets, "held_out": HELD_OUT, "templates": SHAPE_PROMPTS,
              "attributes": {"train": tr, "test": te}, "seed": seed}
    return Dataset("shapes", train_x, tr["shape"], test_x, te["shape"], list(SHAPES), source=f"generated (seed {seed})",
                   train_text=train_text, test_text=test_text, extras=extras)
