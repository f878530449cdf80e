"""Released weights -> a frozen feature extractor (and, for CLIP, its text tower), refusing in one line anything
that does not fit exactly.

Files are read with ``torch.load(weights_only=True)`` only. OpenAI's CLIP ``.pt`` files are TorchScript archives:
they are refused with the one-line conversion recipe, not opened with ``torch.jit.load``, since loading an archive
compiles the code it carries and runs its ``__setstate__`` methods: data-only loading is the guarantee here, and
the recipe is run once, by the user, on a download they have checked (OpenAI's URLs carry the file's sha256).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from bench.core.errors import UsageError
from bench.released.archs import ARCHS, Adapter, arch_family, build_arch, patch_size
from bench.released.clip import ReleasedClip, load_clip
from bench.released.formats import Format, backbone_state, detect_format, family_of, get_format, infer_arch, rename_vit
from bench.store import pickled_global

SHOWN = 3  # mismatched keys named in the message; the rest are counted
DEFAULT_SIZE = 224  # the releases' training size, for ResNets and ViTs when --image-size is not given
CLIP_FORMATS = ("clip", "open_clip")


@dataclass(frozen=True)
class Loaded:
    encoder: Adapter
    format: str  # as given, or as detected for --format auto
    arch: str
    loaded: int  # tensors loaded into the backbone
    ignored: list[str]  # the file's keys that are not the backbone (heads, projectors, decoders, other networks)
    image_size: int = DEFAULT_SIZE  # what the network is fed
    text: ReleasedClip | None = None  # CLIP: the text tower, for zero-shot
    clip: dict[str, Any] | None = None  # CLIP: the open_clip model, activation and preprocessing used


def read_file(path: Path) -> object:
    """torch.load with weights_only=True only: tensors and plain containers; any other pickled object is refused."""
    if not path.is_file():
        raise UsageError(f"--checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns on stderr before refusing a TorchScript archive
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as err:
        if "TorchScript" not in str(err):
            raise UsageError(f"checkpoint {path} cannot be read by torch.load (RuntimeError); "
                             "give a PyTorch .pth/.pth.tar file") from None
        raise UsageError(f"checkpoint {path} is a TorchScript archive (as OpenAI's CLIP .pt files are), which holds code "
                         "and is not loaded here; save its weights once with torch.save(torch.jit.load(path, "
                         "map_location='cpu').state_dict(), 'weights.pth') and pass that file") from None
    except pickle.UnpicklingError as err:
        name = pickled_global(err)
        if not name:
            raise UsageError(f"checkpoint {path} is corrupt (UnpicklingError); download it again") from None
        raise UsageError(f"checkpoint {path} holds objects other than tensors and plain values (it names "
                         f"{name}); refused, since loading them could run code; save its state_dict "
                         "alone with torch.save") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        raise UsageError(f"checkpoint {path} cannot be read by torch.load ({type(err).__name__}); "
                         "give a PyTorch .pth/.pth.tar file") from None


def load_released(path: Path, fmt_name: str, arch: str | None, in_channels: int, image_size: int | None,
                  clip_arch: str | None = None) -> Loaded:
    """The released network of ``path`` behind an Adapter, in eval mode; ``fmt_name`` may be "auto", ``arch``
    (--backbone, ResNets and ViTs) and ``clip_arch`` (--arch, an open_clip model name) None; ``image_size`` None
    is the release's own."""
    if fmt_name != "auto":
        get_format(fmt_name)
    if arch is not None and arch not in ARCHS:
        raise UsageError(f"unknown --backbone {arch!r} for released weights; use one of {', '.join(ARCHS)}")
    if in_channels not in (1, 3):
        raise UsageError(f"released weights take RGB images; this dataset has {in_channels} channels")
    obj = read_file(path)
    fmt = get_format(detect_format(obj, str(path)) if fmt_name == "auto" else fmt_name)
    if fmt.name in CLIP_FORMATS and arch is not None:
        raise UsageError(f"--backbone does not apply to --format {fmt.name}; name the CLIP with --arch (an open_clip model "
                         "name, e.g. ViT-B-32)")
    if fmt.name not in CLIP_FORMATS and clip_arch is not None:
        raise UsageError(f"--arch names a CLIP (--format clip or open_clip); for --format {fmt.name} use --backbone")
    state, ignored = backbone_state(fmt, obj, str(path))
    family = family_of(state)
    if family not in fmt.families:
        raise UsageError(f"checkpoint {path} holds a {family} but {fmt.name} releases are {'/'.join(fmt.families)}; "
                         "check --format")
    if family == "clip":
        return _loaded_clip(fmt, state, ignored, clip_arch, in_channels, image_size, f"checkpoint {path}")
    arch = arch or infer_arch(state)
    if arch_family(arch) != family:
        raise UsageError(f"checkpoint {path} holds a {family}, not a {arch}; pass a matching --backbone")
    size = image_size or DEFAULT_SIZE
    net = _loaded_net(state, arch, family, size, f"checkpoint {path} ({fmt.name}, {arch})")
    return Loaded(Adapter(net, in_channels, size).eval(), fmt.name, arch, len(state), ignored, size)


def _loaded_clip(fmt: Format, state: dict, ignored: list[str], arch: str | None, in_channels: int,
                 image_size: int | None, what: str) -> Loaded:
    clip = load_clip(state, arch, fmt.quick_gelu, image_size, what, mismatch)
    cfg = clip.preprocess
    mode = cfg["interpolation"] if cfg["interpolation"] in ("bilinear", "bicubic") else "bicubic"
    encoder = Adapter(clip.tower, in_channels, clip.image_size, cfg["mean"], cfg["std"], mode).eval()
    details = {"model": clip.arch, "quick_gelu": clip.quick_gelu, "image_size": clip.image_size, "mean": list(cfg["mean"]),
               "std": list(cfg["std"]), "interpolation": mode, "logit_scale": round(float(clip.text.scale()), 4)}
    return Loaded(encoder, fmt.name, clip.arch, len(state), ignored, clip.image_size, clip.text, details)


def _loaded_net(state: dict[str, torch.Tensor], arch: str, family: str, image_size: int, what: str) -> nn.Module:
    patch = patch_size(arch)
    if patch and image_size % patch:
        raise UsageError(f"--image-size {image_size} is not a multiple of {arch}'s patch size {patch}")
    net = build_arch(arch, image_size)
    want = net.state_dict()
    if family == "vit":  # compared in the official names, so the message names keys the user's file has
        want = rename_vit(want, to_official=True)
    if patch:
        state = _fit_positions(state, "pos_embed", want["pos_embed"].shape, patch, image_size)
    check_match(state, want, what)
    net.load_state_dict(rename_vit(state) if family == "vit" else state)
    return net


def _fit_positions(state: dict[str, torch.Tensor], key: str, want: torch.Size, patch: int, image_size: int) -> dict:
    """Position embeddings of the released resolution, (1, 1 + L, D), interpolated (bicubic, as DINO and MAE do)
    to ours."""
    pos = state.get(key)
    if pos is None or pos.shape == want or pos.ndim != len(want) or pos.shape[-1] != want[-1]:
        return state  # absent or of another width: check_match says so
    batched = pos if pos.ndim == 3 else pos.unsqueeze(0)
    grid = round((batched.shape[1] - 1) ** 0.5)
    if grid * grid != batched.shape[1] - 1:
        return state  # not a square grid plus CLS: check_match names the shape
    fitted = interpolate_embeddings(image_size, patch, {"encoder.pos_embedding": batched})["encoder.pos_embedding"]
    return {**state, key: fitted if pos.ndim == 3 else fitted[0]}


def check_match(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """UsageError naming the first missing, unexpected or wrongly shaped keys, with what was expected."""
    said = mismatch(got, want)
    if said:
        raise UsageError(f"{what} does not match the architecture: {said}; check --format and --backbone")


def mismatch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> str:
    """The first missing, unexpected or wrongly shaped keys of ``got``, in one line; "" when it fits ``want``."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} (expected {tuple(want[k].shape)})" for k in want
              if k in got and got[k].shape != want[k].shape]
    problems = [(f"missing {len(missing)} key(s)", missing), (f"{len(unexpected)} unexpected key(s)", unexpected),
                (f"{len(shapes)} shape mismatch(es)", shapes)]
    said = [f"{label}: {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}" for label, keys in problems if keys]
    return "; ".join(said)
