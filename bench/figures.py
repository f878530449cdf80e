"""What a finished run's decoder makes of test images, as a PNG (``repbench plot reconstructions``).

Rows: the input, what the method shows its encoder (masked or corrupted input, where it has one), the
reconstruction(s); then one row decoding linear blends between the embeddings of two test images of different
classes. The method is rebuilt from the run's record.json and loaded from its checkpoint.pt; any method that
is a ``Decoder`` (autoencoder, mae) can be drawn.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import torch

from bench.augment import normalise
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data import Dataset, load_dataset
from bench.data.cache import prepare_matplotlib
from bench.runner import build_method, read_run_config
from bench.store import load_checkpoint
from bench.train import CHECKPOINT
from methods import METHODS
from methods.base import Decoder


def decoder_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if issubclass(cls, Decoder)]


def load_run(run_dir: Path, data_root: str | None) -> tuple[RunConfig, Decoder, Dataset]:
    """(config, method with the checkpoint's weights in eval mode, dataset) of a finished run."""
    cfg = read_run_config(run_dir)
    if not issubclass(METHODS.get(cfg.method), Decoder):
        raise UsageError(f"method {cfg.method!r} has no decoder to draw; plot a run of {' or '.join(decoder_methods())}")
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise UsageError(f"{run_dir} has no {CHECKPOINT}; rerun its training (repbench run ...) to write one")
    ds = load_dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class)
    method = build_method(replace(cfg, device="cpu"), ds)  # pictures are drawn on the CPU, wherever it trained
    try:
        method.load_state_dict(load_checkpoint(ckpt_path)["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"{ckpt_path} does not fit method {cfg.method!r} as this code builds it ({first})") from None
    return cfg, method.eval(), ds


def reconstructions_png(run_dir: Path, data_root: str | None, images: int, steps: int, seed: int) -> bytes:
    cfg, method, ds = load_run(run_dir, data_root)
    mean, std = ds.mean_std()
    idx = pick_images(ds.test_y, images)
    x = normalise(ds.test_x[idx], mean, std)
    with torch.no_grad():
        rows = {"input": x, **method.reconstruct(x, seed=seed)}
        blend = method.interpolate(x[0], x[1], steps, seed=seed)
    a_cls, b_cls = (ds.classes[int(ds.test_y[i])] for i in idx[:2])
    encoder = METHODS.get(cfg.method).required_backbone or cfg.backbone
    title = (f"{cfg.method} ({encoder}) on {cfg.dataset}, {cfg.epochs} epoch(s), seed {cfg.seed}: test images;"
             f" blend A={a_cls} → B={b_cls}")
    return render(rows, blend, method.blend_label, title, mean, std)


def pick_images(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first test image of each class, then the next ones, until n: columns show different classes."""
    first = [int((labels == c).nonzero()[0]) for c in labels.unique()]
    taken = set(first)
    return torch.tensor((first + [i for i in range(len(labels)) if i not in taken])[:n])


def render(rows: dict[str, torch.Tensor], blend: torch.Tensor, blend_label: str, title: str, mean, std) -> bytes:
    """PNG bytes of a grid: one row per entry of ``rows`` (each (n, C, H, W), normalised), then ``blend``."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    to_img = lambda x: (x.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    grid = [(name, to_img(x)) for name, x in rows.items()] + [(blend_label, to_img(blend))]
    cols = max(len(x) for _, x in grid)
    prepare_matplotlib()  # before matplotlib reads its config folder: HOME may be unwritable
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.1 * cols + 1.6, 1.15 * len(grid) + 0.6))
    axes = fig.subplots(len(grid), cols, squeeze=False)
    for r, (name, imgs) in enumerate(grid):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                img = imgs[c]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.9, bottom=0.02, wspace=0.05, hspace=0.1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
