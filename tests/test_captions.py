import numpy as np
import pytest
import torch

from bench.data import DATASETS, load_dataset
from bench.data.captions import COLOUR_RGB, COLOURS, FASHION_DESCRIPTIONS, HELD_OUT, SHAPES, fashion_captions, shapes
from methods.text import words


@pytest.fixture(scope="module")
def ds():
    return load_dataset("shapes")


def pairs(attrs):
    return set(zip(attrs["shape"].tolist(), attrs["colour"].tolist(), strict=True))


def test_captioned_datasets_are_registered():
    assert {"fashion-mnist-captions", "shapes"} <= set(DATASETS.names())


def test_shapes_test_split_holds_only_unseen_pairs(ds):
    train, test = pairs(ds.extras["attributes"]["train"]), pairs(ds.extras["attributes"]["test"])
    held = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELD_OUT}
    assert not train & test
    assert test == held
    assert len(train) == len(SHAPES) * len(COLOURS) - len(held)
    # Every word is seen in training: only the pairings are new.
    assert {s for s, _ in train} == set(range(len(SHAPES))) and {c for _, c in train} == set(range(len(COLOURS)))


def test_shapes_shapes_and_labels(ds):
    assert ds.train_x.shape == (10_000, 3, 32, 32) and ds.test_x.shape == (2_000, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.classes == list(SHAPES) and len(ds.train_text) == 10_000 and len(ds.test_text) == 2_000
    sets = ds.extras["class_sets"]
    assert torch.equal(sets["shape"]["test_y"], ds.test_y)
    combo = sets["combination"]
    for split in ("train", "test"):
        a = ds.extras["attributes"][split]
        assert torch.equal(combo[f"{split}_y"], a["shape"] * len(COLOURS) + a["colour"])
        names = [combo["classes"][i] for i in combo[f"{split}_y"][:50].tolist()]
        pairs50 = zip(a["shape"][:50].tolist(), a["colour"][:50].tolist(), strict=True)
        assert names == [f"{COLOURS[c]} {SHAPES[s]}" for s, c in pairs50]


def test_shapes_is_deterministic(ds):
    again = shapes()
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_x, ds.test_x)
    assert again.train_text == ds.train_text and again.test_text == ds.test_text
    assert not torch.equal(shapes(seed=1).train_x[:10], ds.train_x[:10])


def test_shapes_captions_name_the_shape_and_colour(ds):
    a = ds.extras["attributes"]["test"]
    for text, s, c in zip(ds.test_text, a["shape"].tolist(), a["colour"].tolist(), strict=True):
        w = words(text)
        assert SHAPES[s] in w and COLOURS[c] in w
        assert not (set(w) & set(SHAPES)) - {SHAPES[s]}


def test_shapes_pixels_have_the_captioned_colour(ds):
    # The pixels furthest from the image's median (the background) are the shape; their median colour
    # must be nearest to the labelled colour.
    x = ds.train_x[:300].float().numpy()
    a = ds.extras["attributes"]["train"]
    for img, c in zip(x, a["colour"][:300].tolist(), strict=True):
        flat = img.reshape(3, -1)
        dist = np.abs(flat - np.median(flat, axis=1, keepdims=True)).sum(0)
        fg = np.median(flat[:, dist > 0.5 * dist.max()], axis=1)
        assert np.argmin(((COLOUR_RGB - fg) ** 2).sum(1)) == c


def test_shapes_subset_keeps_captions_aligned(ds):
    small = load_dataset("shapes", per_class=20)
    assert small.train_y.bincount().tolist() == [20] * len(SHAPES)
    full_index = {t: i for i, t in enumerate(ds.train_text)}
    for text, y in zip(small.train_text[:40], small.train_y[:40].tolist(), strict=True):
        assert SHAPES[y] in words(text) and text in full_index


def test_fashion_captions_vary_and_are_seeded():
    labels = torch.arange(10).repeat(200)
    caps = fashion_captions(labels, 0)
    assert caps == fashion_captions(labels, 0) and caps != fashion_captions(labels, 1)
    assert np.mean([len(words(c)) for c in caps]) > 4
    for y, (nouns, _, _) in enumerate(FASHION_DESCRIPTIONS):
        mine = [c for c, lab in zip(caps, labels.tolist(), strict=True) if lab == y]
        assert len(set(mine)) >= 30
        assert all(any(n in c for n in nouns) for c in mine)
        # The class's own name appears in some of its captions (zero-shot prompts use it).
        assert any(f" {nouns[0]}" in c for c in mine)


def _fmnist_available() -> bool:
    try:
        DATASETS.get("fashion-mnist")()
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _fmnist_available(), reason="Fashion-MNIST not installed (repbench data fetch fashion-mnist)")
def test_fashion_mnist_captions_dataset():
    ds = load_dataset("fashion-mnist-captions", per_class=30, test_per_class=5)
    assert ds.name == "fashion-mnist-captions" and ds.num_classes == 10
    assert len(ds.train_text) == len(ds.train_y) == 300 and len(ds.test_text) == len(ds.test_y) == 50
    for text, y in zip(ds.train_text, ds.train_y.tolist(), strict=True):
        assert any(n in text for n in FASHION_DESCRIPTIONS[y][0])
