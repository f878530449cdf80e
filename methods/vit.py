"""Vision Transformer backbone (Dosovitskiy et al. 2021) sized for 8-32 pixel images on CPUs.

Pre-norm encoder blocks (torch's nn.TransformerEncoderLayer, whose attention runs through
scaled_dot_product_attention), a CLS token and fixed 2-D sin-cos positional embeddings (as MAE and
MoCo v3 use). ``forward(x) -> (N, D)`` is all protocols, MoCo v3 and DINO need; MAE encodes a
subset of patches with ``forward_tokens(x, keep_idx)``.

Sizes are repbench's, not DeiT's: "tiny" is 128 wide and 4 deep, "small" 256 wide and 6 deep
(DeiT-Ti is 192x12, DeiT-S 384x12: pass dim/depth/heads for those). The default patch gives a 4x4
grid (7 px on 28x28, 8 on 32x32, 2 on 8x8): a 7x7 grid costs ~3x the compute, which the 2-core
quick suite cannot afford; pass ``patch_size=4`` for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UsageError

WIDTHS = {"tiny": {"dim": 128, "depth": 4, "heads": 4}, "small": {"dim": 256, "depth": 6, "heads": 8}}
DEFAULT_GRID = 4


def sincos_2d(gh: int, gw: int, dim: int, base_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding, (gh*gw, dim), row-major like the patch order.

    With ``base_grid`` the positions are spread over the base grid's range, so a smaller crop
    (DINO's local views) gets interpolated positions rather than the top-left corner's.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs a width divisible by 4, got {dim}")
    bh, bw = base_grid or (gh, gw)
    ys = torch.linspace(0, bh - 1, gh) if gh > 1 else torch.zeros(1)
    xs = torch.linspace(0, bw - 1, gw) if gw > 1 else torch.zeros(1)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(yy), embed(xx)], dim=1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, C*p*p), patches in row-major order."""
    return F.unfold(x, p, stride=p).transpose(1, 2)


def unpatchify(patches: torch.Tensor, p: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, L, C*p*p) -> (N, C, H, W); the inverse of ``patchify``."""
    return F.fold(patches.transpose(1, 2), size, p, stride=p)


def random_masking(n: int, length: int, ratio: float, device=None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's per-sample uniform masking: keep ``int(length * (1 - ratio))`` patches of each row.

    Returns keep_idx (N, L_keep) int64 and mask (N, L) bool, True where a patch is hidden.
    """
    keep = int(length * (1 - ratio))
    if not 0 < keep <= length:
        raise ValueError(f"mask ratio {ratio} leaves {keep} of {length} patches visible; use a ratio in [0, 1)")
    noise = torch.rand(n, length, device=device, generator=generator)
    keep_idx = noise.argsort(dim=1)[:, :keep]
    mask = torch.ones(n, length, dtype=torch.bool, device=device)
    mask.scatter_(1, keep_idx, False)
    return keep_idx, mask


def transformer(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ViT(nn.Module):
    # bfloat16 autocast on a CPU slows this model down while it speeds the convnets up (results/benchmarks/
    # throughput.md), so Method.float32_on_cpu keeps any model holding a ViT in float32 there.

    def __init__(self, in_channels: int, image_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 pool: str = "cls", mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise UsageError(f"vit pool={pool!r} not understood; use pool=cls or pool=mean")
        if image_size % patch_size:
            raise UsageError(f"vit patch_size {patch_size} does not divide the {image_size}px images; pick a divisor")
        self.patch_size, self.pool, self.feature_dim = patch_size, pool, dim
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, so not worth saving: rebuilt from the architecture on load.
        self.register_buffer("pos_embed", sincos_2d(self.grid, self.grid, dim), persistent=False)
        self.blocks = transformer(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # As MAE / MoCo v3: xavier for linear layers and the patch projection, small normal for CLS.
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.feature_dim, -1))
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus positions, (N, L, D), before any masking."""
        tokens = self.patch_embed(x)
        gh, gw = tokens.shape[-2:]
        pos = self.pos_embed if (gh, gw) == (self.grid, self.grid) else \
            sincos_2d(gh, gw, self.feature_dim, (self.grid, self.grid)).to(tokens)
        return tokens.flatten(2).transpose(1, 2) + pos

    def forward_tokens(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised output tokens (N, 1 + L', D), CLS first; with keep_idx (N, L') only those patches enter."""
        tokens = self.embed_patches(x)
        if keep_idx is not None:
            tokens = tokens.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


def vit(in_channels: int, image_size: int, width: str = "tiny", patch_size: int | None = None, pool: str = "cls",
        dim: int | None = None, depth: int | None = None, heads: int | None = None, mlp_ratio: float = 4.0) -> ViT:
    if width not in WIDTHS:
        raise UsageError(f"vit width={width!r} not understood; use one of {', '.join(WIDTHS)} (or dim/depth/heads)")
    size = {**WIDTHS[width], **{k: v for k, v in (("dim", dim), ("depth", depth), ("heads", heads)) if v}}
    if size["dim"] % size["heads"]:
        raise UsageError(f"vit dim {size['dim']} is not divisible by heads {size['heads']}; change one of them")
    if patch_size is None:
        patch_size = max(1, image_size // DEFAULT_GRID)
    return ViT(in_channels, image_size, patch_size, size["dim"], size["depth"], size["heads"], pool, mlp_ratio)
