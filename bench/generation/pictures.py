"""Small PNG grids of images in [0, 1]: one labelled row per entry."""

from __future__ import annotations

import io

import torch

from bench.data.cache import prepare_matplotlib


def grid_png(rows: dict[str, torch.Tensor], title: str, cell: float = 0.7) -> bytes:
    """PNG bytes: one row per ``rows`` entry (label -> (n, C, H, W) in [0, 1]), columns left to right."""
    cols = max(len(x) for x in rows.values())
    prepare_matplotlib()  # before matplotlib reads its config folder: HOME may be unwritable
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cell * cols + 1.8, cell * len(rows) + 0.5))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        arr = imgs.float().permute(0, 2, 3, 1).numpy()
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                ax.imshow(arr[c, ..., 0] if arr.shape[-1] == 1 else arr[c], cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=1.6 / (cell * cols + 1.8), right=0.99, top=1 - 0.4 / (cell * len(rows) + 0.5),
                        bottom=0.01, wspace=0.04, hspace=0.06)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return buf.getvalue()


def square(images: torch.Tensor, per_row: int = 8) -> dict[str, torch.Tensor]:
    """A flat batch as rows of ``per_row`` for grid_png (row labels: the first image's number)."""
    return {f"{i + 1}-{min(i + per_row, len(images))}": images[i:i + per_row] for i in range(0, len(images), per_row)}


def first_of_each_class(labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([(labels == c).nonzero()[0, 0] for c in labels.unique()])
