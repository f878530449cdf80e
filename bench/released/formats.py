"""The official layouts of released weights, and their key mapping onto the torchvision modules of archs.py.

Each format says where the backbone's tensors sit in the file (a top-level key, a prefix) and which keys are
not the backbone (heads, projectors, decoders), then maps timm ViT names onto torchvision's. Key names as in the
official repositories: torchvision resnet; facebookresearch/moco (``module.encoder_q.``), moco-v3
(``module.base_encoder.``), dino (plain state dicts; full training checkpoints under ``teacher`` with
``module.backbone.``), mae (under ``model``, decoder beside the encoder), openai/CLIP and open_clip (the whole
model, both towers, ``visual.`` beside the text tower; open_clip's training checkpoints under ``state_dict`` with
``module.``), which bench/released/clip.py builds with open_clip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from bench.core.errors import UsageError


@dataclass(frozen=True)
class Format:
    name: str
    families: tuple[str, ...]  # "resnet", "vit", "clip"
    containers: tuple[str, ...]  # top-level keys the state dict may sit under, tried in order; else the file itself
    prefixes: tuple[str, ...]  # stripped when present; keys under none of them are not the backbone
    ignore: tuple[str, ...]  # regexes of backbone-prefixed keys that are heads, projectors or decoders
    quick_gelu: bool = False  # CLIP towers: OpenAI's x * sigmoid(1.702 x) rather than the exact GELU


_HEADS = (r"fc\.", r"head\.", r"heads\.")
FORMATS = {f.name: f for f in (
    Format("torchvision-resnet", ("resnet",), (), ("",), _HEADS),
    Format("moco", ("resnet",), ("state_dict",), ("module.encoder_q.", "encoder_q."), _HEADS),
    Format("moco-v3", ("resnet", "vit"), ("state_dict",), ("module.base_encoder.", "base_encoder."), _HEADS),
    Format("dino", ("resnet", "vit"), ("teacher",), ("module.backbone.", "backbone.", ""), _HEADS),
    Format("mae", ("vit",), ("model",), ("",), (*_HEADS, r"decoder_", r"mask_token$", r"fc_norm\.")),
    # Both towers: the whole model is kept; OpenAI's files add three integers that are not weights.
    Format("clip", ("clip",), ("state_dict",), ("module.", ""), (r"(input_resolution|context_length|vocab_size)$",),
           quick_gelu=True),
    Format("open_clip", ("clip",), ("state_dict",), ("module.", ""), ()),
)}

# timm ViT name -> torchvision VisionTransformer name; {n} is the block index. A name ending in "." is a prefix.
_VIT_NAMES = (
    ("cls_token", "class_token"),
    ("pos_embed", "encoder.pos_embedding"),
    ("patch_embed.proj.", "conv_proj."),
    ("blocks.{n}.norm1.", "encoder.layers.encoder_layer_{n}.ln_1."),
    ("blocks.{n}.attn.qkv.weight", "encoder.layers.encoder_layer_{n}.self_attention.in_proj_weight"),
    ("blocks.{n}.attn.qkv.bias", "encoder.layers.encoder_layer_{n}.self_attention.in_proj_bias"),
    ("blocks.{n}.attn.proj.", "encoder.layers.encoder_layer_{n}.self_attention.out_proj."),
    ("blocks.{n}.norm2.", "encoder.layers.encoder_layer_{n}.ln_2."),
    ("blocks.{n}.mlp.fc1.", "encoder.layers.encoder_layer_{n}.mlp.0."),
    ("blocks.{n}.mlp.fc2.", "encoder.layers.encoder_layer_{n}.mlp.3."),
    ("norm.", "encoder.ln."),
)


def _rules(reverse: bool) -> list[tuple[re.Pattern, str]]:
    rules = []
    for official, ours in _VIT_NAMES:
        src, dst = (ours, official) if reverse else (official, ours)
        pattern = "^" + re.escape(src).replace(re.escape("{n}"), r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((re.compile(pattern), dst.replace("{n}", r"\1")))
    return rules


_TO_OURS, _TO_OFFICIAL = _rules(False), _rules(True)


def rename_vit(state: dict[str, torch.Tensor], to_official: bool = False) -> dict[str, torch.Tensor]:
    """timm names -> torchvision names (or back); a name no rule knows is kept, for the key check to report."""
    rules = _TO_OFFICIAL if to_official else _TO_OURS
    out = {}
    for key, value in state.items():
        rule = next(((p, r) for p, r in rules if p.match(key)), None)
        out[rule[0].sub(rule[1], key, count=1) if rule else key] = value
    return out


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UsageError(f"unknown checkpoint format {name!r}; use one of {', '.join(FORMATS)} or auto")
    return FORMATS[name]


def detect_format(obj: object, path: str) -> str:
    """``--format auto``: the format whose layout (container, key prefix, key names) a loaded file has."""
    top = obj if isinstance(obj, dict) else {}
    inner = next((top[c] for c in ("state_dict", "model", "teacher") if isinstance(top.get(c), dict)), top)
    keys = [k for k in inner if isinstance(k, str)]

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("module.encoder_q.", "encoder_q."):
        return "moco"
    if has("module.base_encoder.", "base_encoder."):
        return "moco-v3"
    if has("module.visual.", "visual."):
        if "input_resolution" in inner:  # only OpenAI's own files carry it
            return "clip"
        raise UsageError(f"checkpoint {path} is a CLIP, but which model (activation, head width) is not in the file; "
                         "pass --format clip (OpenAI's files) or --format open_clip --arch NAME (open_clip's)")
    if "cls_token" in keys or has("module.backbone.cls_token", "backbone.cls_token"):
        return "mae" if "model" in top else "dino"
    if "conv1.weight" in keys and has("layer1.", "module.backbone.layer1."):
        return "dino" if "teacher" in top else "torchvision-resnet"
    raise UsageError(f"checkpoint {path} matches no known format (its keys start: {', '.join(map(str, keys[:3]))}); "
                     f"pass --format, one of {', '.join(FORMATS)}")


def backbone_state(fmt: Format, obj: object, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone's tensors of a loaded file in ``fmt``'s layout (names still the official ones), and the keys
    left out as heads or other networks."""
    state = next((obj[c] for c in fmt.containers if isinstance(obj, dict) and c in obj), obj)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        where = " or ".join(repr(c) for c in fmt.containers) or "the top level"
        raise UsageError(f"checkpoint {path} holds no {fmt.name} state dict (expected name -> tensor under {where}); "
                         "check --format")
    prefix = next((p for p in fmt.prefixes if p and any(k.startswith(p) for k in state)), "")
    if prefix == "" and "" not in fmt.prefixes:
        raise UsageError(f"checkpoint {path} has no keys under {' or '.join(fmt.prefixes)} as {fmt.name} files do "
                         f"(its keys start: {', '.join(list(state)[:3])}); check --format")
    ignore = re.compile("|".join(f"(?:{r})" for r in fmt.ignore) or r"(?!)")  # (?!) matches nothing
    kept, dropped = {}, []
    for key, value in state.items():
        name = key.removeprefix(prefix) if key.startswith(prefix) else None
        if name is None or ignore.match(name):
            dropped.append(key)
        else:
            kept[name] = value
    if not kept:
        raise UsageError(f"checkpoint {path} holds only heads or other networks, no {fmt.name} backbone "
                         f"(its keys start: {', '.join(list(state)[:3])}); check --format")
    return kept, dropped


def family_of(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("visual.") for k in state) or "token_embedding.weight" in state:
        return "clip"
    return "vit" if "cls_token" in state or "pos_embed" in state else "resnet"


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """The --backbone a ResNet or ViT state dict (official names) was trained as, for when none is given."""
    family = family_of(state)
    if family == "vit":
        return {384: "vit-s16", 768: "vit-b16", 1024: "vit-l16"}.get(state["cls_token"].shape[-1], "vit-b16")
    return "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"
