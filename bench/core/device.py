"""Where work runs: the device a user asked for, and whether bfloat16 is native there."""

from __future__ import annotations

import torch

from bench.core.errors import UsageError


def resolve_device(device: str | torch.device) -> torch.device:
    """The device asked for; CUDA without a visible GPU, or an unknown kind, is a user error (no silent CPU fallback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but no CUDA GPU is visible; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; use cpu or cuda")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} was asked for but {torch.cuda.device_count()} CUDA GPU(s) are visible "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of those")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix work is native here: CUDA, or a CPU with AMX or AVX512-BF16 (oneDNN).

    The training loop's autocast and the linear probe's products both ask; elsewhere bfloat16 is emulated and
    slower, so both stay float32.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
