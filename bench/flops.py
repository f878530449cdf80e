"""FLOPs of a training step and the card's bf16 matmul peak, for achieved TFLOP/s and MFU.

A step's FLOPs are counted by torch's own FlopCounterMode (matmuls, convolutions and attention, forward and
backward: what MFU counts; element-wise ops and the optimizer are not counted, as in PaLM's definition). The peak is
measured on the same card in the same process with a large bf16 matmul, and the datasheet's dense bf16 number is
kept beside it for the cards we know.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; matched by substring of the name
# torch reports, most specific first. "H100 80GB HBM3" is the SXM part.
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4), ("A100", 312.0))


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch counts the CUDA attention kernels but not the CPU flash kernel the ViT's attention runs on a CPU; the same
# formulas apply to it, so CPU and GPU rows count the same FLOPs for the same model.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs that ``step()`` runs (forward and backward when it calls backward)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        step()
    return int(counter.get_total_flops())


def datasheet_tflops(card: str) -> float | None:
    for fragment, tflops in DATASHEET_BF16_TFLOPS:
        if fragment in card:
            return tflops
    return None


def matmul_peak_tflops(device: torch.device, size: int, seconds: float = 1.0,
                       dtype: torch.dtype = torch.bfloat16) -> float:
    """Best achieved TFLOP/s of a size x size x size matmul over about ``seconds`` of repeats."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    _sync(device)
    torch.matmul(a, b)  # the first call picks and loads the kernel
    _sync(device)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / 10)
    return flops / best / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
