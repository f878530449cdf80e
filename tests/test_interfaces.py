"""Every registered method against the interface declared in methods/base.py, and every protocol against the
one protocol signature of protocols/base.py: parametrized over the registries, so a new entry is checked
without anyone remembering to add it."""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass

import pytest
import torch
from torch import nn

from bench.experiments.check import CI_DATASETS
from methods import METHODS
from methods.backbones import BACKBONES
from methods.base import Context, Decoder, Method, TextTower
from methods.spec import Ablation, Knob, Recipe, ViewConfig
from protocols import PROTOCOLS
from protocols.base import Features

CTX = Context(in_channels=1, image_size=8, num_classes=3, num_train=60, backbone_args={"widths": (8, 16)},
              class_names=("a", "b", "c"))


def build(name: str) -> Method:
    cls = METHODS.get(name)
    torch.manual_seed(0)
    return cls(Context(**{**vars(CTX), "backbone": cls.required_backbone or "convnet",
                          "backbone_args": None if cls.required_backbone else CTX.backbone_args}), cls.Config())


def overrides(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(Method, name)


@pytest.mark.parametrize("name", METHODS.names())
def test_class_declarations(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and is_dataclass(cls.Config) and isinstance(cls.paper_recipe, Recipe)
    assert cls.trained_by in ("sgd", "fit", "none")
    assert cls.required_backbone is None or cls.required_backbone in BACKBONES
    assert isinstance(cls.quick_budget, bool) and set(cls.ci_datasets) <= set(CI_DATASETS)
    have = {f.name for f in fields(cls.Config)}
    for knob in cls.search_space:
        assert isinstance(knob, Knob) and knob.field in have, f"{name}: search knob {knob.field!r} is not a Config field"
    for grid, abl in cls.ablations.items():
        assert isinstance(abl, Ablation) and abl.cells and abl.claim and abl.recipe in ("paper", "unified")
        for c in abl.cells:
            assert set(c.args) <= have, f"{name}: ablation {grid} cell {c.label!r} sets {set(c.args) - have}"
    # What the harness calls for each way of training is implemented, and nothing it would not call.
    assert overrides(cls, "training_step") == (cls.trained_by == "sgd")
    assert overrides(cls, "fit") == (cls.trained_by == "fit")


def test_each_ablation_grid_is_declared_once():
    names = [grid for _, cls in METHODS.items() for grid in vars(cls).get("ablations", {})]
    inherited = [grid for _, cls in METHODS.items() for grid in cls.ablations]
    assert len(inherited) == len(set(inherited)) == len(names), "a subclass inherits its parent's ablations"


@pytest.mark.parametrize("name", METHODS.names())
def test_built_method_keeps_the_interface(name):
    m = build(name)
    cls = type(m)
    assert isinstance(m.cfg, cls.Config) and isinstance(m.encoder, nn.Module)
    assert all(isinstance(v, ViewConfig) for v in m.views) and (len(m.views) > 0) == (cls.trained_by == "sgd")
    x = torch.randn(4, 1, 8, 8)
    m.eval()
    with torch.no_grad():
        feats = m.encoder(x)
        assert feats.shape[0] == 4 and feats.ndim == 2
        assert m.embed(x).shape[0] == 4
    assert isinstance(m.float32_on_cpu(), bool)


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if issubclass(c, TextTower)])
def test_text_tower_capability(name):
    m = build(name).eval()
    with torch.no_grad():
        text = m.encode_text(["a", "b c"])
        image = m.project_image(m.encoder(torch.randn(3, 1, 8, 8)))
    assert text.shape[0] == 2 and image.shape == (3, text.shape[1])
    assert m.scale().numel() == 1 and m.caption_source in ("dataset", "class-name fallback")


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if issubclass(c, Decoder)])
def test_decoder_capability(name):
    m = build(name).eval()
    x = torch.randn(2, 1, 8, 8)
    rows = m.reconstruct(x, seed=0)
    assert rows and all(r.shape == x.shape for r in rows.values())
    assert m.interpolate(x[0], x[1], 3, seed=0).shape == (3, 1, 8, 8) and isinstance(m.blend_label, str)


def _features(n: int = 90) -> Features:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return Features(torch.randn(n, 5, generator=g) + y[:, None], y)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_signature(name):
    fn = PROTOCOLS.get(name)
    params = inspect.signature(fn).parameters
    assert list(params)[:2] == ["train", "test"]
    assert params["seed"].kind == params["device"].kind == inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = fn(_features(), _features(), seed=0, device="cpu")
    assert isinstance(out, dict) and all(isinstance(v, dict) for v in out.values())
    with pytest.raises(TypeError):
        fn(_features(), _features(), seed=0, device="cpu", no_such_setting=1)
