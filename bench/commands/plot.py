"""`repbench plot reconstructions`: what a finished run's decoder makes of test images, as a PNG.

Rows: the input, what the method shows its encoder (masked or corrupted input, where it has one),
the reconstruction(s); then one row decoding linear blends between the embeddings of two test images
of different classes. The method is rebuilt from the run's record.json and loaded from its
checkpoint.pt; any method with ``reconstruct`` and ``interpolate`` (autoencoder, mae) can be drawn.
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import fields
from pathlib import Path

import torch

from bench.args import int_range
from bench.config import Recipe, RunConfig
from bench.errors import UsageError

NAME = "plot"
HELP = "draw a finished run's reconstructions and decoded interpolations (methods with a decoder) as a PNG"
KINDS = ("reconstructions",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS, help="what to draw")
    p.add_argument("--run", required=True, help="a run directory: results/runs/<suite>/<run-id>")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int_range(2, 16), default=8, help="test images to show (default 8)")
    p.add_argument("--steps", type=int_range(3, 16), default=8, help="interpolation steps (default 8)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed of masks / noise (default 0)")
    p.add_argument("--data-root", help="folder holding the dataset files")


def decoder_methods() -> list[str]:
    import methods

    return [n for n in methods.METHODS.names() if hasattr(methods.METHODS.get(n), "reconstruct")]


def check_out(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} must name a .png file")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name a .png file inside it")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: {probe} is not a writable directory; pass another --out")


def config_from_record(d: dict, where: Path) -> RunConfig:
    try:
        known = {f.name for f in fields(RunConfig)}
        d = {k: v for k, v in d.items() if k in known}
        d["recipe"] = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("recipe", {}).items()})
        if d.get("protocols") is not None:
            d["protocols"] = tuple(d["protocols"])
        return RunConfig(**d)
    except (TypeError, AttributeError) as err:
        raise UsageError(f"{where} holds no valid run config ({err}); is it a repbench record.json?") from None


def load_run(run_dir: Path, data_root: str | None):
    """(config, method with the checkpoint's weights in eval mode, dataset) of a finished run."""
    import methods
    from bench.data import load_dataset
    from bench.pipeline import context
    from bench.store import load_checkpoint, read_json
    from bench.train import CHECKPOINT
    from methods.base import make_config

    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; pass --run results/runs/<suite>/<run-id>")
    record_path = run_dir / "record.json"
    if not record_path.is_file():
        raise UsageError(f"{run_dir} has no record.json; pass a run directory (results/runs/<suite>/<run-id>)")
    record = read_json(record_path)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UsageError(f"{record_path} has no run config; is it a repbench record.json?")
    cfg = config_from_record(record["config"], record_path)
    cls = methods.METHODS.get(cfg.method)
    if not hasattr(cls, "reconstruct"):
        raise UsageError(f"method {cfg.method!r} has no decoder to draw; plot a run of {' or '.join(decoder_methods())}")
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise UsageError(f"{run_dir} has no {CHECKPOINT}; rerun its training (repbench run ...) to write one")
    ds = load_dataset(cfg.dataset, data_root, cfg.per_class, cfg.test_per_class)
    method = cls(context(cfg, ds), make_config(cls, cfg.method_args))
    try:
        method.load_state_dict(load_checkpoint(ckpt_path)["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"{ckpt_path} does not fit method {cfg.method!r} as this code builds it ({first})") from None
    return cfg, method.eval(), ds


def pick_images(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first test image of each class, then the next ones, until n: columns show different classes."""
    first = [int((labels == c).nonzero()[0]) for c in labels.unique()]
    taken = set(first)
    return torch.tensor((first + [i for i in range(len(labels)) if i not in taken])[:n])


def render(rows: dict[str, torch.Tensor], blend: torch.Tensor, blend_label: str, title: str, mean, std) -> bytes:
    """PNG bytes of a grid: one row per entry of ``rows`` (each (n, C, H, W), normalised), then ``blend``."""
    from matplotlib.figure import Figure

    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    to_img = lambda x: (x.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    grid = [(name, to_img(x)) for name, x in rows.items()] + [(blend_label, to_img(blend))]
    cols = max(len(x) for _, x in grid)
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


def run(a: argparse.Namespace) -> int:
    from bench.store import atomic_write_bytes

    out = Path(a.out)
    check_out(out)
    cfg, method, ds = load_run(Path(a.run), a.data_root)
    mean, std = ds.mean_std()
    idx = pick_images(ds.test_y, a.images)
    x = (ds.test_x[idx].float().div(255) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        rows = {"input": x, **method.reconstruct(x, seed=a.seed)}
        blend = method.interpolate(x[0], x[1], a.steps, seed=a.seed)
    a_cls, b_cls = (ds.classes[int(ds.test_y[i])] for i in idx[:2])
    encoder = getattr(getattr(method, "cfg", None), "encoder", cfg.backbone)  # MAE always encodes with a vit
    title = (f"{cfg.method} ({encoder}) on {cfg.dataset}, {cfg.epochs} epoch(s), seed {cfg.seed}: test images;"
             f" blend A={a_cls} → B={b_cls}")
    try:
        label = getattr(method, "blend_label", "decoded blend A→B")
        atomic_write_bytes(out, render(rows, blend, label, title, mean, std))
    except OSError as err:
        raise UsageError(f"cannot write {out}: {err.strerror or err}; pass another --out") from None
    print(f"wrote {out}")
    return 0
