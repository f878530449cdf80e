"""`repbench eval` on CLIP files: both towers built with open_clip from a tiny CLIP registered here (open_clip's
own config format), saved in open_clip's layout (a training checkpoint: ``state_dict`` with ``module.``) and in
OpenAI's (plain, with its three integers, QuickGELU). Zero-shot through the CLI must equal what open_clip's own
tokenizer, ``encode_image`` and ``build_zero_shot_classifier`` give on the same images: the check that catches a
wrong template, class name, activation, scale or normalisation. Nothing is downloaded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image
from torch import nn

from bench.data import load_dataset
from bench.evaluate import DEFAULT_TEMPLATES
from bench.released import load_released
from bench.released.clip import openai_arch, prompts
from bench.released.load import mismatch

TINY = "repbench-tiny-clip"  # registered for this session; open_clip has no way to unregister a config
TINY_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
OTHER = "repbench-tiny-clip-wide"  # same depth, other widths: a file of another CLIP
OTHER_CFG = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "width": 96}}
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # ILSVRC classes 0-3: tench, goldfish, two sharks
OPENAI_INTS = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in ((TINY, TINY_CFG), (OTHER, OTHER_CFG)):
        (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)


def _clip(quick_gelu: bool, name: str = TINY) -> nn.Module:
    torch.manual_seed(1)
    model = open_clip.create_model(name, force_quick_gelu=quick_gelu)
    with torch.no_grad():  # every tensor off its init (LayerNorms are 1 and 0 there), so a skipped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"open_clip": _clip(False), "clip": _clip(True)}


@pytest.fixture(scope="module")
def files(tmp_path_factory, models) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clip_files")
    layouts = {"open_clip": {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in
                                                                       models["open_clip"].state_dict().items()}},
               "clip": {**models["clip"].state_dict(), **OPENAI_INTS},
               "visual-only": {k: v for k, v in models["clip"].state_dict().items() if k.startswith("visual.")},
               "other": _clip(False, OTHER).state_dict()}
    for name, obj in layouts.items():
        torch.save(obj, d / f"{name}.pth")
    return {name: d / f"{name}.pth" for name in layouts}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """An ImageNet-shaped tree: 4 wnid folders, non-square noise images (decoded and centre-cropped at 64 px)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 6)):
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{i}.png")
    return root


def _eval(cli, out: Path, *argv) -> dict:
    code, stdout, err = cli("eval", *map(str, argv), "--out", out)
    assert code == 0, err
    (path,) = out.glob("eval/*/*/record.json")
    assert stdout == f"wrote {path}\n"
    return json.loads(path.read_text())


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names, templates) -> tuple[float, torch.Tensor]:
    """open_clip's zero-shot on uint8 images: CLIP's statistics, bicubic antialiased resize to the model's size."""
    x = F.interpolate(x.float() / 255, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))
    image = model.encode_image((x.expand(-1, 3, -1, -1) - mean) / std, normalize=True)
    classifier = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer(TINY), names, templates)
    pred = (image @ classifier).argmax(1)
    return float((pred == y).float().mean()), pred


@pytest.mark.parametrize("fmt", ["open_clip", "clip"])
def test_imagenet_zero_shot_equals_open_clip(fmt, files, models, imagenet, cli, tmp_path):
    arch = ["--arch", TINY]
    rec = _eval(cli, tmp_path, "--checkpoint", files[fmt], "--format", fmt, *arch, "--dataset", "imagenet",
                "--data-root", imagenet, "--protocols", "knn,zero-shot")
    ds = load_dataset("imagenet", str(imagenet))
    names = list(IMAGENET_CLASSNAMES[:4])
    top1, pred = _reference(models[fmt], ds.test_x, ds.test_y, names, OPENAI_IMAGENET_TEMPLATES)
    assert len(pred.unique()) >= 2  # a model that says one class everywhere would not test much
    zs = rec["metrics"]["zero-shot"]
    assert zs["classes"] == names == ["tench", "goldfish", "great white shark", "tiger shark"]
    assert (zs["templates"], zs["images"]) == (80, 24)
    assert zs["top1"] == pytest.approx(top1, abs=1e-6)
    assert zs["logit_scale"] == pytest.approx(float(models[fmt].logit_scale.detach().exp()), rel=1e-4)
    assert rec["clip"]["quick_gelu"] is (fmt == "clip")
    assert rec["clip"]["class_names"] == "open_clip IMAGENET_CLASSNAMES, by wnid"
    assert (rec["config"]["backbone"], rec["config"]["image_size"]) == (TINY, 32)
    bench = json.loads(next(tmp_path.glob("eval/imagenet/*/clip_benchmark_zeroshot_classification.json")).read_text())
    assert bench == rec["clip_benchmark"]
    assert (bench["model"], bench["pretrained"], bench["metrics"]["acc1"]) == (TINY, f"{fmt}.pth", zs["top1"])


def test_wrong_preprocessing_would_be_caught(models, imagenet):
    """The reference is sensitive to what the test checks: other statistics or prompts change the answers."""
    ds = load_dataset("imagenet", str(imagenet))
    names = list(IMAGENET_CLASSNAMES[:4])
    _, right = _reference(models["clip"], ds.test_x, ds.test_y, names, OPENAI_IMAGENET_TEMPLATES)
    _, other_prompts = _reference(models["clip"], ds.test_x, ds.test_y, names, ["{}"])
    _, folder_names = _reference(models["clip"], ds.test_x, ds.test_y, list(WNIDS), OPENAI_IMAGENET_TEMPLATES)
    assert not torch.equal(right, other_prompts) and not torch.equal(right, folder_names)


def test_features_are_open_clips_and_grey_images_are_repeated(files, models):
    """What the image protocols get: encode_image of [0, 1] grey images repeated to RGB, CLIP's statistics."""
    loaded = load_released(files["clip"], "clip", None, 1, None, TINY)
    x = torch.rand(3, 1, 32, 32)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))
    with torch.no_grad():
        want = models["clip"].encode_image((x.repeat(1, 3, 1, 1) - mean) / std)
        torch.testing.assert_close(loaded.encoder(x), want, atol=1e-5, rtol=1e-4)
        texts = ["a photo of a 3.", "a blurry photo of a cat."]
        torch.testing.assert_close(loaded.text.encode_text(texts),
                                   models["clip"].encode_text(open_clip.get_tokenizer(TINY)(texts)))
    assert loaded.ignored == list(OPENAI_INTS) and loaded.encoder.feature_dim == 32
    assert load_released(files["clip"], "auto", None, 3, None, TINY).format == "clip"  # OpenAI's integers say so


def test_default_protocols_add_zero_shot_with_the_harness_templates(files, models, cli, tmp_path):
    """Other datasets: their class names, the harness's templates; zero-shot joins the default protocols."""
    rec = _eval(cli, tmp_path, "--checkpoint", files["open_clip"], "--format", "open_clip", "--arch", TINY,
                "--dataset", "digits", "--per-class", "5", "--test-per-class", "3")
    assert rec["config"]["protocols"] == ["knn", "linear", "kmeans", "fewshot", "zero-shot"]
    ds = load_dataset("digits", None, 5, 3)
    top1, _ = _reference(models["open_clip"], ds.test_x, ds.test_y, ds.classes, DEFAULT_TEMPLATES)
    zs = rec["metrics"]["zero-shot"]
    assert (zs["classes"], zs["templates"], rec["clip"]["class_names"]) == (ds.classes, 8, "the dataset's class names")
    assert zs["top1"] == pytest.approx(top1, abs=1e-6)


def test_openai_files_are_matched_to_the_released_models():
    """OpenAI's own sizes, read from the shapes (meta tensors: nothing allocated)."""
    for name in ("RN50", "ViT-L-14-336"):  # the first and the last tried
        with torch.device("meta"):
            state = open_clip.create_model(name, device="meta").state_dict()
        assert openai_arch(state, "file", mismatch) == name


def test_imagenet100_names_come_from_the_wnids():
    names, templates, source = prompts("imagenet100", ["n01440764", "n02869837", "n04589890"])
    assert names == ["tench", "poke bonnet", "window screen"] and len(templates) == 80
    assert prompts("imagenet100", ["n01440764", "cats"])[0] == ["n01440764", "cats"]
    assert prompts("cifar10", ["cat"]) == (["cat"], None, "the dataset's class names")


def _torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)).save(str(path))
    return path


# name -> (argv after "eval" given (inputs folder, files), fragment the one line must hold)
BAD = {
    "another-models-state-dict": (lambda d, f: ["--checkpoint", _resnet(d), "--format", "clip"],
                                  "holds a resnet but clip releases are clip"),
    "unknown-arch": (lambda d, f: ["--checkpoint", f["open_clip"], "--format", "open_clip", "--arch", "ViT-B-33"],
                     "--arch ViT-B-33 is not an open_clip model config; did you mean ViT-B-32"),
    "arch-of-another-size": (lambda d, f: ["--checkpoint", f["other"], "--format", "open_clip", "--arch", TINY],
                             "repbench-tiny-clip: 32 shape mismatch(es): visual.class_embedding (96,) (expected (64,))"),
    "open-clip-without-arch": (lambda d, f: ["--checkpoint", f["open_clip"], "--format", "open_clip"], "pass --arch NAME"),
    "openai-layout-of-no-release": (lambda d, f: ["--checkpoint", f["clip"], "--format", "clip"],
                                    "matches none of OpenAI's released CLIPs"),
    "image-tower-only": (lambda d, f: ["--checkpoint", f["visual-only"], "--format", "clip", "--arch", TINY],
                         "holds CLIP's image tower only"),
    "hf-tokenizer-arch": (lambda d, f: ["--checkpoint", f["open_clip"], "--format", "open_clip", "--arch",
                                        "xlm-roberta-base-ViT-B-32"], "needs a Hugging Face tokenizer"),
    "other-image-size": (lambda d, f: ["--checkpoint", f["clip"], "--format", "clip", "--arch", TINY, "--image-size", "64"],
                         "takes 32-pixel images"),
    "backbone-for-clip": (lambda d, f: ["--checkpoint", f["clip"], "--format", "clip", "--backbone", "resnet18"],
                          "--backbone does not apply to --format clip"),
    "arch-for-a-resnet": (lambda d, f: ["--checkpoint", _resnet(d), "--format", "torchvision-resnet", "--arch", TINY],
                          "--arch names a CLIP (--format clip or open_clip); for --format torchvision-resnet use --backbone"),
    "auto-open-clip": (lambda d, f: ["--checkpoint", f["open_clip"], "--format", "auto"], "--format open_clip --arch NAME"),
    "torchscript-archive": (lambda d, f: ["--checkpoint", _torchscript(d / "ViT-B-32.pt"), "--format", "clip"],
                            "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'weights.pth')"),
}


def _resnet(d: Path) -> Path:
    torch.save({"conv1.weight": torch.ones(64, 3, 7, 7), "layer1.0.conv1.weight": torch.ones(64, 64, 3, 3)}, d / "r.pth")
    return d / "r.pth"


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(name, files, cli, refused, tmp_path):
    make, fragment = BAD[name]
    (inputs := tmp_path / "in").mkdir()
    argv = [*make(inputs, files), "--dataset", "digits", "--per-class", "5", "--protocols", "knn", "--out", tmp_path / "out"]
    refused(cli("eval", *argv), fragment, tmp_path / "out")
