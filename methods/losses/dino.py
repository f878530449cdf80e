"""Self-distillation cross-entropy (DINO). Shape letters: N batch, V views, K head outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["dino_loss"]


def dino_loss(student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO's loss (Caron et al. 2021, eq. 3 and Algorithm 1).

    The teacher's view i gives the target ``softmax((t_i - center) / teacher_temp)`` (no gradient);
    it is paired with every student view j != i (the teacher sees only the global views, which
    come first among the student's views). Each pair contributes the cross-entropy with
    ``log_softmax(s_j / student_temp)`` averaged over samples; the loss is the mean over pairs.

    Shape: student_out V tensors (N, K); teacher_out G <= V tensors (N, K); center (K,) or (1, K) -> scalar.
    """
    pairs = [(i, j) for i in range(len(teacher_out)) for j in range(len(student_out)) if i != j]
    if not pairs:
        raise ValueError("dino_loss needs a teacher view and a different student view to pair it with")
    targets = [F.softmax((_upcast(t) - center) / teacher_temp, dim=-1).detach() for t in teacher_out]
    return sum(F.cross_entropy(_upcast(student_out[j]) / student_temp, targets[i]) for i, j in pairs) / len(pairs)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 (softmax targets and log-probabilities), float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
