"""Released weights -> a frozen feature extractor, refusing in one line anything that does not fit exactly."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from bench.core.errors import UsageError
from bench.released.archs import ARCHS, Adapter, arch_family, build_arch, patch_size, statistics
from bench.released.formats import backbone_state, detect_format, family_of, get_format, infer_arch, rename_vit
from bench.store import pickled_global

SHOWN = 3  # mismatched keys named in the message; the rest are counted


@dataclass(frozen=True)
class Loaded:
    encoder: Adapter
    format: str  # as given, or as detected for --format auto
    arch: str
    loaded: int  # tensors loaded into the backbone
    ignored: list[str]  # the file's keys that are not the backbone (heads, projectors, decoders, other networks)


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
        raise UsageError(f"checkpoint {path} is a TorchScript archive (as OpenAI's CLIP .pt files are), which holds code; "
                         "save its weights once with torch.save(torch.jit.load(path).state_dict(), 'weights.pth') "
                         "and pass that file") from None
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


def load_released(path: Path, fmt_name: str, arch: str | None, in_channels: int, image_size: int) -> Loaded:
    """The released backbone of ``path`` behind an Adapter, in eval mode; ``fmt_name`` may be "auto" and ``arch``
    None (read from the weights' shapes)."""
    if fmt_name != "auto":
        get_format(fmt_name)
    if arch is not None and arch not in ARCHS:
        raise UsageError(f"unknown --backbone {arch!r} for released weights; use one of {', '.join(ARCHS)}")
    if in_channels not in (1, 3):
        raise UsageError(f"released weights take RGB images; this dataset has {in_channels} channels")
    obj = read_file(path)
    fmt = get_format(detect_format(obj, str(path)) if fmt_name == "auto" else fmt_name)
    state, ignored = backbone_state(fmt, obj, str(path))
    family = family_of(state)
    if family not in fmt.families:
        raise UsageError(f"checkpoint {path} holds a {family} but {fmt.name} releases are {'/'.join(fmt.families)}; "
                         "check --format")
    arch = arch or infer_arch(state)
    if arch_family(arch) != family:
        raise UsageError(f"checkpoint {path} holds a {family}, not a {arch}; pass a matching --backbone")
    net = _loaded_net(state, arch, family, image_size, fmt.quick_gelu, f"checkpoint {path} ({fmt.name}, {arch})")
    return Loaded(Adapter(net, in_channels, image_size, *statistics(arch)).eval(), fmt.name, arch, len(state), ignored)


def _loaded_net(state: dict[str, torch.Tensor], arch: str, family: str, image_size: int, quick_gelu: bool,
                what: str) -> nn.Module:
    patch = patch_size(arch)
    if patch and image_size % patch:
        raise UsageError(f"--image-size {image_size} is not a multiple of {arch}'s patch size {patch}")
    net = build_arch(arch, image_size, quick_gelu)
    want = net.state_dict()
    if family == "vit":  # compared in the official names, so the message names keys the user's file has
        want = rename_vit(want, to_official=True)
    if patch:
        key = "pos_embed" if family == "vit" else "positional_embedding"
        state = _fit_positions(state, key, want[key].shape, patch, image_size)
    check_match(state, want, what)
    net.load_state_dict(rename_vit(state) if family == "vit" else state)
    return net


def _fit_positions(state: dict[str, torch.Tensor], key: str, want: torch.Size, patch: int, image_size: int) -> dict:
    """Position embeddings of the released resolution, interpolated (bicubic, as DINO and MAE do) to ours.
    ViTs keep them as (1, 1 + L, D), CLIP as (1 + L, D)."""
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
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} (expected {tuple(want[k].shape)})" for k in want
              if k in got and got[k].shape != want[k].shape]
    problems = [(f"missing {len(missing)} key(s)", missing), (f"{len(unexpected)} unexpected key(s)", unexpected),
                (f"{len(shapes)} shape mismatch(es)", shapes)]
    said = [f"{label}: {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}" for label, keys in problems if keys]
    if said:
        raise UsageError(f"{what} does not match the architecture: {'; '.join(said)}; check --format and --backbone")
