"""CLIP's two towers from released weights, built with open_clip (nothing downloaded), for `repbench eval`.

Layouts: OpenAI's state dict (``--format clip``: the text tower at the top level, ``visual.*`` beside it, and
the integers input_resolution, context_length and vocab_size, which are dropped) is also the layout of
open_clip's CLIP class, so both formats load into ``open_clip.create_model(NAME, pretrained=None)`` with a strict
key and shape check. An OpenAI file needs no ``--arch``: its shapes are matched against the nine models OpenAI
released. An open_clip file needs it, since neither the activation (QuickGELU or exact GELU) nor the head width
(64, but 80 for ViT-H) is in the weights, and a wrong guess would load without error. ``--format clip`` forces
QuickGELU, as OpenAI trained with it; ``--format open_clip`` takes the activation of the named config.

Images are fed at the model's own input size and statistics (its ``preprocess_cfg``): dataset images are square
already, so resizing them (bicubic, antialiased, as CLIP's preprocessing) equals CLIP's short-side resize and
centre crop. A different ``--image-size`` is refused rather than interpolating position embeddings: the numbers
would then not be comparable with published ones, and CLIP ResNets' attention pool cannot take another size.

Zero-shot prompts: the ImageNet trees (imagenet, imagenet100) use open_clip's IMAGENET_CLASSNAMES, looked up by
wnid through timm's ImageNet-1k synset list (both in class-index order), and OpenAI's 80 ImageNet templates;
other datasets keep their class names and their own templates, else the harness's.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.core.errors import UsageError
from methods.base import TextTower

IMAGENET_TREES = ("imagenet", "imagenet100")
TEXT_BATCH = 256  # prompts encoded at once: ImageNet's 1000 classes x 80 templates would not fit in one batch


def _open_clip():
    # Imported when a CLIP file is evaluated, not with the command: it pulls timm and huggingface_hub (~1 s).
    import open_clip

    return open_clip


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs 'initialized randomly' for each model built without a pretrained tag; the weights follow."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


class ImageTower(nn.Module):
    """``encode_image``: the projected embedding, the feature the image protocols and zero-shot both use."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():  # towers name their output width differently (timm ones not at all): one image asks
            self.feature_dim = model.encode_image(torch.zeros(1, 3, size, size)).shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


class ReleasedClip(TextTower):
    """The text side of a released CLIP, as the harness's ``text_side`` asks a trained method for it."""

    caption_source = "dataset"
    train_tokens = None

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return torch.cat([self.model.encode_text(self.tokenizer(texts[i:i + TEXT_BATCH]).to(device)).float().cpu()
                          for i in range(0, len(texts), TEXT_BATCH)])

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return features  # encode_image already projects into the joint space

    def scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp().reshape(())


@dataclass(frozen=True)
class Clip:
    tower: ImageTower
    text: ReleasedClip
    arch: str
    image_size: int
    preprocess: dict[str, Any]  # open_clip's preprocess_cfg: size, mean, std, interpolation
    quick_gelu: bool


def usable_names() -> list[str]:
    """open_clip configs whose text tower takes CLIP's BPE tokens, so nothing is downloaded to tokenize."""
    oc = _open_clip()
    return [n for n in oc.list_models() if _bpe_tokenizer(oc, n)]


def _bpe_tokenizer(oc, name: str) -> bool:
    text = (oc.get_model_config(name) or {}).get("text_cfg", {})
    return not {"hf_model_name", "hf_tokenizer_name"} & set(text) and "siglip" not in name.lower()


def check_arch(name: str) -> None:
    oc = _open_clip()
    if name in oc.list_models() and _bpe_tokenizer(oc, name):
        return
    if name in oc.list_models():
        raise UsageError(f"--arch {name}: its text tower needs a Hugging Face tokenizer, which repbench does not download; "
                         "use a CLIP with open_clip's own BPE tokenizer (RN50, ViT-B-32, ViT-L-14, ViT-H-14, ...)")
    near = difflib.get_close_matches(name, usable_names(), n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise UsageError(f"--arch {name} is not an open_clip model config; {hint}see open_clip.list_models() "
                     "(ViT-B-32, ViT-B-16-quickgelu, RN50, ...)")


def _built(oc, name: str, quick_gelu: bool, device: str = "cpu") -> nn.Module:
    with _quiet():
        return oc.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, device=device)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def openai_arch(state: dict[str, torch.Tensor], what: str, mismatch) -> str:
    """The model OpenAI released whose keys and shapes ``state`` has (built on the meta device: no memory, ~0.1 s
    each); else a one-line error naming the closest one's first differences."""
    oc = _open_clip()
    names = [n for n, tag in oc.list_pretrained() if tag == "openai" and not n.endswith("-quickgelu")]
    got, closest = _shapes(state), None
    for name in names:
        with torch.device("meta"):
            want = _built(oc, name, True, "meta").state_dict()
        if _shapes(want) == got:
            return name
        wrong = len(set(want) ^ set(got)) + sum(want[k].shape != state[k].shape for k in want.keys() & got.keys())
        closest = min(closest or (wrong, name, want), (wrong, name, want), key=lambda c: c[0])
    raise UsageError(f"{what} matches none of OpenAI's released CLIPs ({', '.join(names)}); the closest, "
                     f"{closest[1]}: {mismatch(state, closest[2])}; pass --arch NAME, the open_clip model it was trained as")


def _converted(oc, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's own fix-ups of older files: text tower keys for CustomTextCLIP, a 0-d logit_scale."""
    if "positional_embedding" in state and not isinstance(model, oc.CLIP):  # text tower under "text." there
        state = oc.model.convert_to_custom_text_state_dict(state)
    scale = state.get("logit_scale")
    if scale is not None and scale.shape != model.logit_scale.shape and scale.numel() == 1:
        state = {**state, "logit_scale": scale.reshape(model.logit_scale.shape)}
    return state


def _side(size: Any, arch: str) -> int:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h != w:
        raise UsageError(f"--arch {arch} takes {h}x{w} images; repbench evaluates square images only")
    return int(h)


def load_clip(state: dict[str, torch.Tensor], arch: str | None, quick_gelu: bool, image_size: int | None,
              what: str, mismatch) -> Clip:
    """Both towers of ``state`` (official names, ``module.`` stripped) in an open_clip model, eval mode.
    ``mismatch(got, want)`` says what differs in one line ("" when nothing)."""
    if not any(k.startswith("visual.") for k in state):
        raise UsageError(f"{what} holds no CLIP image tower (no visual.* keys); check --format")
    if "token_embedding.weight" not in state and not any(k.startswith("text.") for k in state):
        raise UsageError(f"{what} holds CLIP's image tower only (no token_embedding.weight or text.*); zero-shot needs "
                         "the text tower too: give the whole released state dict")
    oc = _open_clip()
    if arch is None and not quick_gelu:
        raise UsageError(f"{what}: open_clip files do not say which model they are; pass --arch NAME "
                         "(the open_clip config it was trained as, e.g. ViT-B-32, ViT-B-16-quickgelu, ViT-H-14)")
    if arch is None:
        arch = openai_arch(state, what, mismatch)
    check_arch(arch)
    model = _built(oc, arch, quick_gelu)
    cfg = dict(model.visual.preprocess_cfg)
    side = _side(cfg["size"], arch)
    if image_size is not None and image_size != side:
        raise UsageError(f"--image-size {image_size}: {arch} takes {side}-pixel images, and CLIP is evaluated at its own "
                         f"size; leave --image-size out (images are resized to {side})")
    state = _converted(oc, model, state)
    problem = mismatch(state, model.state_dict())
    if problem:
        raise UsageError(f"{what} does not match open_clip's {arch}: {problem}; check --format and --arch")
    model.load_state_dict(state)
    model.eval()
    quick = quick_gelu or bool((oc.get_model_config(arch) or {}).get("quick_gelu", False))
    return Clip(ImageTower(model, side), ReleasedClip(model, oc.get_tokenizer(arch)), arch, side, cfg, quick)


def prompts(dataset: str, classes: list[str]) -> tuple[list[str], tuple[str, ...] | None, str]:
    """(class names, templates, where the names come from) for zero-shot; templates None: the dataset's own or
    the harness's defaults."""
    if dataset not in IMAGENET_TREES:
        return list(classes), None, "the dataset's class names"
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from timm.data import ImageNetInfo

    templates = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)  # open_clip's are functions of the class name
    by_wnid = dict(zip(ImageNetInfo("imagenet-1k").label_names(), IMAGENET_CLASSNAMES, strict=True))
    if all(c in by_wnid for c in classes):
        return [by_wnid[c] for c in classes], templates, "open_clip IMAGENET_CLASSNAMES, by wnid"
    return list(classes), templates, "folder names (not all are ImageNet-1k wnids)"
