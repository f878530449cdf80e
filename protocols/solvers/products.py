"""The two products of every solver step with the feature matrix x, in float32 or from a bfloat16 copy.

Forward: logits' = a x' for the models' weights a. Backward: the gradient x' r' for their residuals r, which
are rounded to bfloat16 by ``dithered_bf16`` first. bfloat16 is used where it is native (CUDA, a CPU with AMX or
AVX512-BF16) and N is large (``product_dtype``); float32 products are exact.

CPU layout (the one switch, ``SPLIT_ON_CPU``): oneDNN splits bfloat16 products of these skinny shapes badly
over a CPU's threads, so on a CPU each forward product is issued as a batch of row blocks of x, one per thread
(a multiple of ``BLOCK_ROWS`` rows each: other counts ran at half speed), and the backward product reads a
transposed copy of x split in two halves, made on a second thread while the caller does other set-up.
Measurements: results/benchmarks/linear-probe.md. Off, or off a CPU, each product is one plain matmul.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from bench.core.device import native_bf16

SPLIT_ON_CPU = True
BF16_MIN_ROWS = 16384
FORWARD_BLOCKS = 2  # row blocks of x in a CPU forward product
BLOCK_ROWS = 32
_COPIER = ThreadPoolExecutor(1, thread_name_prefix="repbench-transpose")


def product_dtype(n: int, device: torch.device) -> torch.dtype:
    """bfloat16 for the products with x when it is native here and the sample is large: the gradient then
    carries rounding error ~ 2^-9 |x| |r| / sqrt(N), far below the tolerance only for large N."""
    return torch.bfloat16 if n >= BF16_MIN_ROWS and native_bf16(device) else torch.float32


@dataclass
class Products:
    """Shape: x (B, N, D+1) float32; fast the same in bfloat16, or None for float32 products; dither (N,) int32
    for ``dithered_bf16``; in the CPU layout, ``pending`` resolves to the transpose of x's first n <= N rows,
    (B, D', n) with D' = D+1 rounded up to even, copied on another thread."""

    x: torch.Tensor
    fast: torch.Tensor | None = None
    dither: torch.Tensor | None = None
    split: bool = False  # the CPU layout
    pending: Future | None = field(default=None, repr=False)

    @classmethod
    def build(cls, x: torch.Tensor, dtype: torch.dtype, transposed_rows: int | None = None) -> Products:
        """Products with x; ``transposed_rows``: how many leading rows the CPU layout's transposed copy covers
        (default all; the rest multiply through the row-major copy)."""
        if dtype == torch.float32:
            return cls(x)
        fast = x.to(dtype)
        # Drawn once per problem from its own seeded generator, so fits are reproducible.
        gen = torch.Generator().manual_seed(0)
        dither = torch.randint(0, 1 << 16, (x.shape[1],), dtype=torch.int32, generator=gen).to(x.device)
        split = SPLIT_ON_CPU and x.device.type == "cpu"
        pending = _COPIER.submit(transposed, fast[:, :transposed_rows]) if split else None
        return cls(x, fast, dither, split, pending)

    def head(self, n: int) -> Products:
        """The same products on the first n rows, sharing the copies (the transposed one must cover n rows)."""
        fast = None if self.fast is None else self.fast[:, :n]
        return replace(self, x=self.x[:, :n], fast=fast, dither=None if self.dither is None else self.dither[:n])

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.fast is None else self.fast.dtype

    def forward(self, a: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """a @ x' in float32; a rounded to the product dtype unless ``exact``. Shape: a (B, K, D+1) -> (B, K, N)."""
        if exact or self.fast is None:
            return a @ self.x.transpose(1, 2)
        b, n, d1 = self.fast.shape
        wt = a.to(self.fast.dtype).transpose(1, 2)
        out = torch.empty(b, a.shape[1], n, device=a.device)
        if not self.split:
            return out.copy_((self.fast @ wt).transpose(1, 2))
        rows = n // (FORWARD_BLOCKS * BLOCK_ROWS) * BLOCK_ROWS  # per row block; the last n - head rows apart
        head = FORWARD_BLOCKS * rows
        for i in range(b):  # each problem's row blocks as the batch entries of one product: a view, never a copy
            if rows:
                blocks = self.fast[i, :head].view(FORWARD_BLOCKS, rows, d1) @ wt[i].expand(FORWARD_BLOCKS, d1, -1)
                out[i, :, :head].copy_(blocks.view(head, -1).t())
            if head < n:
                out[i, :, head:].copy_((self.fast[i, head:] @ wt[i]).t())
        return out

    def backward(self, r: torch.Tensor) -> torch.Tensor:
        """x' r' in float32. Shape: r (B, K, N) -> (B, D+1, K)."""
        if self.fast is None:
            return (r @ self.x).transpose(1, 2)
        low = dithered_bf16(r, self.dither)
        fast_t = None if self.pending is None else self.pending.result()
        n = 0 if fast_t is None else fast_t.shape[2]  # rows with a transposed copy: the first n
        parts = []
        if n:
            b, dp = fast_t.shape[:2]
            rt = low[..., :n].transpose(1, 2).contiguous()  # (B, n, K)
            rt = rt.expand(2, *rt.shape[1:]) if b == 1 else rt.repeat_interleave(2, 0)
            halves = fast_t.view(b * 2, dp // 2, n) @ rt  # (2B, D'/2, K)
            parts.append(halves.view(b, dp, -1)[:, :self.x.shape[2]].float())
        if n < r.shape[-1]:
            parts.append((low[..., n:] @ self.fast[:, n:]).float().transpose(1, 2))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def transposed(fast: torch.Tensor) -> torch.Tensor:
    """Shape: (B, N, D+1) -> (B, D', N) contiguous, D' = D+1 rounded up to even (a zero row added). One 2-D copy
    per problem: torch's blocked transpose serves only 2-D copies."""
    b, n, d1 = fast.shape
    out = fast.new_empty((b, d1 + d1 % 2, n))
    out[:, d1:].zero_()
    for i in range(b):
        out[i, :d1].copy_(fast[i].t())
    return out


def dithered_bf16(r: torch.Tensor, dither: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16, rounding each magnitude up with probability equal to the dropped fraction.

    Round-to-nearest would bias the gradient wherever residuals are alike across samples (early in a fit, under
    strong regularisation); these errors, with a fixed uniform dither per sample, are independent across samples
    and average out over N rows, as x's own rounding does (~2^-9 |r| |x| / sqrt(N) per entry).
    Adding a uniform integer in [0, 2^16) to the float's bit pattern and clearing the low 16 bits is stochastic
    rounding of the magnitude (the sign bit is untouched for finite values); the result is exact in bfloat16.
    Shape: r (..., N) float32, dither (N,) int32 in [0, 2^16) -> (..., N) bfloat16.
    """
    bits = (r.contiguous().view(torch.int32) + dither).bitwise_and_(-65536)
    return bits.view(torch.float32).to(torch.bfloat16)
