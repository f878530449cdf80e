"""`repbench eval` on released weights: each official layout, written here with the same keys and shapes as the
published files, loads into a network whose features equal the original's; bad files are one line, exit 2.

ResNets are torchvision's own modules (the releases are torchvision ResNets); the ViTs are a timm-style reference
written below from timm's VisionTransformer (the layout DINO, MoCo v3 and MAE publish), so the key mapping is
checked against an independent implementation, not against itself. ViT-S/16 at 32 px keeps it quick. CLIP files
(both towers, built with open_clip) are tested in test_released_clip.py.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.cli import COMMANDS
from bench.released import FORMATS, load_released
from bench.released.archs import build_arch
from bench.released.formats import rename_vit

TINY_DATA = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--protocols", "knn"]
TINY = [*TINY_DATA, "--image-size", "32"]


class Block(nn.Module):
    """timm's pre-norm block: names norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        x = x + self.attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, image_size: int = 32, patch: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the CLS token after the final norm: DINO's feature
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def _perturbed(net: nn.Module) -> nn.Module:
    """Every parameter moved off its init (LayerNorms are 1 and 0 there), so a swapped or skipped one shows."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _without_fc(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net)
    net.fc = nn.Identity()
    return net


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _extra(shapes: dict[str, tuple]) -> dict:
    return {k: torch.randn(s) for k, s in shapes.items()}


# format -> how its official file wraps a backbone state dict (heads, projectors and other networks included)
RESNET_LAYOUTS = {
    "torchvision-resnet": lambda s: s,
    "moco": lambda s: {"epoch": 800, "arch": "resnet50", "state_dict": {
        **_prefixed({k: v for k, v in s.items() if not k.startswith("fc.")}, "module.encoder_q."),
        **_extra({"module.encoder_q.fc.0.weight": (2048, 512), "module.encoder_q.fc.2.weight": (128, 2048),
                  "module.encoder_k.conv1.weight": (64, 3, 7, 7), "module.queue": (128, 64)})}},
    "moco-v3": lambda s: {"epoch": 100, "arch": "resnet50", "state_dict": {
        **_prefixed({k: v for k, v in s.items() if not k.startswith("fc.")}, "module.base_encoder."),
        **_extra({"module.base_encoder.fc.0.weight": (4096, 512), "module.predictor.0.weight": (4096, 256),
                  "module.momentum_encoder.conv1.weight": (64, 3, 7, 7)})}},
    "dino": lambda s: {k: v for k, v in s.items() if not k.startswith("fc.")},
}
VIT_LAYOUTS = {
    "dino": lambda s: {k: v for k, v in s.items() if not k.startswith("head.")},
    "moco-v3": lambda s: {"state_dict": {**_prefixed(s, "module.base_encoder."), **_extra(
        {"module.base_encoder.head.0.weight": (4096, 384), "module.predictor.0.weight": (4096, 256)})}},
    "mae": lambda s: {"model": {**{k: v for k, v in s.items() if not k.startswith("head.")}, **_extra(
        {"mask_token": (1, 1, 512), "decoder_embed.weight": (512, 384), "decoder_pos_embed": (1, 5, 512),
         "decoder_blocks.0.norm1.weight": (512,), "decoder_pred.weight": (768, 512)})}},
}

@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():  # non-trivial BN statistics, so a wrong or skipped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def vit_s() -> nn.Module:
    torch.manual_seed(0)
    return _perturbed(TimmViT())


def _reference(family: str, resnet18, vit_s) -> nn.Module:
    return {"resnet": resnet18, "vit": vit_s}[family]


@pytest.fixture(scope="module")
def files(tmp_path_factory, resnet18, vit_s) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("released")
    out = {}
    for family, layouts in (("resnet", RESNET_LAYOUTS), ("vit", VIT_LAYOUTS)):
        for fmt, wrap in layouts.items():
            out[family, fmt] = d / f"{family}-{fmt}.pth"
            torch.save(wrap(_reference(family, resnet18, vit_s).state_dict()), out[family, fmt])
    return out


def test_every_format_has_a_layout_here():
    assert set(FORMATS) == set(RESNET_LAYOUTS) | set(VIT_LAYOUTS) | {"clip", "open_clip"}  # CLIP: test_released_clip.py
    assert "eval" in COMMANDS


ARCH_OF = {"resnet": "resnet18", "vit": "vit-s16"}


@pytest.mark.parametrize(("family", "fmt"), [("resnet", f) for f in RESNET_LAYOUTS] + [("vit", f) for f in VIT_LAYOUTS])
def test_mapping_is_exact(family, fmt, files, resnet18, vit_s):
    loaded = load_released(files[family, fmt], fmt, None, 3, 32)
    assert loaded.arch == ARCH_OF[family]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = _reference(family, resnet18, vit_s)
        want = (_without_fc(ref) if family == "resnet" else ref)(x)
        got = loaded.encoder.net(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (fmt == "torchvision-resnet") == any(k.startswith("fc.") for k in loaded.ignored)


@pytest.mark.parametrize(("family", "fmt", "mean", "std"), [
    ("resnet", "torchvision-resnet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_grey_images_reach_the_network_as_the_release_expects(family, fmt, mean, std, files, resnet18):
    """What `repbench eval` extracts: [0, 1] grey images repeated to RGB and normalised with the release's statistics."""
    loaded = load_released(files[family, fmt], fmt, None, 1, 32)
    x = torch.rand(3, 1, 32, 32)
    rgb = (x.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ref = _reference(family, resnet18, None)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x), (_without_fc(ref) if family == "resnet" else ref)(rgb),
                                   atol=1e-5, rtol=1e-4)


# what --format auto makes of each layout: DINO's ResNet-50 file is a plain torchvision state dict.
AUTO = {("resnet", "dino"): "torchvision-resnet"}


@pytest.mark.parametrize(("family", "fmt"), [("resnet", f) for f in RESNET_LAYOUTS] + [("vit", f) for f in VIT_LAYOUTS])
def test_auto_detects_the_format(family, fmt, files):
    expected = AUTO.get((family, fmt), fmt)
    loaded = load_released(files[family, fmt], "auto", None, 3, 32)
    assert (loaded.format, loaded.arch) == (expected, ARCH_OF[family])


@pytest.mark.parametrize(("family", "fmt", "dim"), [("vit", "dino", 384)])
def test_positions_are_interpolated_to_the_eval_size(family, fmt, dim, files):
    loaded = load_released(files[family, fmt], fmt, None, 1, 64)  # 2x2 grid released, 4x4 used
    with torch.no_grad():
        assert loaded.encoder(torch.rand(2, 1, 48, 48)).shape == (2, dim)


@pytest.mark.parametrize(("ours", "reference"), [("vit-b16", lambda: TimmViT(768, 12, 12, 224))])
def test_released_sizes_have_the_official_keys_and_shapes(ours, reference):
    """The full-size architectures, checked at the state-dict level (too big to run here)."""
    want = {k: v.shape for k, v in reference().state_dict().items() if not k.startswith("head.")}
    got = build_arch(ours, 224).state_dict()
    got = rename_vit(got, to_official=True)
    assert {k: v.shape for k, v in got.items()} == want


@pytest.mark.parametrize(("family", "fmt", "given"), [("resnet", "moco-v3", "moco-v3"), ("vit", "mae", "mae"),
                                                      ("resnet", "moco", "auto")])
def test_cli_writes_a_record_with_the_checkpoint_sha256(family, fmt, given, files, cli, tmp_path):
    code, out, err = cli("eval", "--checkpoint", files[family, fmt], "--format", given, *TINY, "--out", tmp_path)
    assert code == 0, err
    (path,) = tmp_path.glob("eval/digits/*/record.json")
    rec = json.loads(path.read_text())
    assert rec["checkpoint"]["sha256"] == hashlib.sha256(files[family, fmt].read_bytes()).hexdigest()
    assert (rec["config"]["format"], rec["config"]["format_detected"]) == (fmt, given == "auto")
    assert rec["config"]["backbone"] == ARCH_OF[family]
    assert out == f"wrote {path}\n"
    assert rec["checkpoint"]["feature_dim"] == {"resnet": 512, "vit": 384}[family]
    assert 0.0 <= rec["metrics"]["knn"]["top1"] <= 1.0 and rec["data"]["train"] == 100
    assert {"git_sha", "torch", "device"} <= set(rec["provenance"])


def _write(d: Path, name: str, obj) -> Path:
    torch.save(obj, d / name)
    return d / name


def _torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, and still how OpenAI's files were written
        torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)).save(str(path))
    return path


def _tweaked(files, key: str, value=None) -> dict:
    state = torch.load(files["resnet", "torchvision-resnet"], weights_only=True)
    if value is None:
        state.pop(key)
    else:
        state[key] = value
    return state


# name -> (argv after "eval" given (inputs folder, files), fragment the one line must hold)
BAD = {
    "missing-file": (lambda d, f: ["--checkpoint", d / "nope.pth", "--format", "dino"], "no such file"),
    "unknown-format": (lambda d, f: ["--checkpoint", f["vit", "dino"], "--format", "simclr"], "invalid choice"),
    "pickle-payload": (lambda d, f: ["--checkpoint", _write(d, "p.pth", {"args": argparse.Namespace(lr=1)}),
                                     "--format", "dino"], "refused, since loading them could run code"),
    "not-a-torch-file": (lambda d, f: ["--checkpoint", d.joinpath("t.pth").write_text("hi") and d / "t.pth",
                                       "--format", "dino"], "cannot be read by torch.load"),
    "wrong-prefix": (lambda d, f: ["--checkpoint", f["resnet", "moco"], "--format", "moco-v3"],
                     "no keys under module.base_encoder."),
    "not-wrapped": (lambda d, f: ["--checkpoint", f["resnet", "moco"], "--format", "torchvision-resnet"],
                    "holds no torchvision-resnet state dict"),
    "vit-as-resnet-format": (lambda d, f: ["--checkpoint", f["vit", "dino"], "--format", "torchvision-resnet"],
                             "holds a vit but torchvision-resnet releases are resnet"),
    "wrong-backbone": (lambda d, f: ["--checkpoint", f["resnet", "dino"], "--format", "dino", "--backbone", "resnet50"],
                       "missing 198 key(s): layer1.0.conv3.weight"),
    "resnet-as-vit": (lambda d, f: ["--checkpoint", f["resnet", "dino"], "--format", "dino", "--backbone", "vit-s16"],
                      "not a vit-s16"),
    "missing-key": (lambda d, f: ["--checkpoint", _write(d, "m.pth", _tweaked(f, "layer2.0.bn1.running_var")),
                                  "--format", "torchvision-resnet"], "missing 1 key(s): layer2.0.bn1.running_var"),
    "unexpected-key": (lambda d, f: ["--checkpoint", _write(d, "u.pth", _tweaked(f, "layer5.0.w", torch.ones(1))),
                                     "--format", "torchvision-resnet"], "1 unexpected key(s): layer5.0.w"),
    "shape-mismatch": (lambda d, f: ["--checkpoint", _write(d, "s.pth", _tweaked(f, "conv1.weight", torch.ones(64, 1, 7, 7))),
                                     "--format", "torchvision-resnet"], "conv1.weight (64, 1, 7, 7) (expected (64, 3, 7, 7))"),
    "vit-block-missing": (lambda d, f: ["--checkpoint", _write(d, "v.pth", {k: v for k, v in torch.load(
        f["vit", "dino"], weights_only=True).items() if not k.startswith("blocks.11.")}), "--format", "dino"],
        "missing 12 key(s): blocks.11.norm1.weight"),
    "auto-unknown-keys": (lambda d, f: ["--checkpoint", _write(d, "k.pth", {"encoder.weight": torch.ones(2)}),
                                        "--format", "auto"], "matches no known format (its keys start: encoder.weight)"),
    "torchscript-archive": (lambda d, f: ["--checkpoint", _torchscript(d / "ViT-B-32.pt"), "--format", "clip"],
                            "is a TorchScript archive"),
    "vit-size-not-patch-multiple": (lambda d, f: ["--checkpoint", f["vit", "dino"], "--format", "dino",
                                                  "--image-size", "40"], "not a multiple of vit-s16's patch size 16"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_checkpoint_is_one_line_and_writes_nothing(name, files, cli, refused, tmp_path):
    make, fragment = BAD[name]
    (inputs := tmp_path / "in").mkdir()
    argv = make(inputs, files)
    size = [] if "--image-size" in argv else ["--image-size", "32"]
    argv = [*argv, *size, *TINY_DATA, "--out", tmp_path / "out"]
    refused(cli("eval", *argv), fragment, tmp_path / "out")
