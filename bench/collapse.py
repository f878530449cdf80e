"""Collapse signals from the papers, as pure functions on a probe batch's outputs, and the verdict drawn from them.

- ``std_ratio``: the per-dimension std of the L2-normalised outputs x sqrt(D) (SimSiam, Chen & He 2021, Fig. 2 and
  Sec. 4.1): ~1 when the outputs spread like a Gaussian, 0 when every output is the same vector. Measured on the raw
  outputs: DINO's *centred* teacher output stays spread when every raw output equals the center (uniform collapse).
- ``effective_rank``: exp of the entropy of the normalised singular values of the L2-normalised, centred outputs (Roy & Vetterli
  2007); recorded, not used in the verdict (a low rank is dimensional collapse, which still trains).
- ``feature_std_ratio`` and ``feature_effective_rank``: the same two on the backbone's features, what the protocols
  score. A head that ends in BatchNorm (SimSiam, MoCo v3) rescales every output dimension to unit variance over the
  batch, so its outputs can read as spread while the features under it shrink onto a few directions. Recorded, not
  used in the verdict: features after a ReLU share a large common direction, so their level is not comparable
  across backbones, only between cells of one grid.
- For methods with softmax outputs (DINO, Caron et al. 2021, Sec. 5.3 and Fig. 7): the mean entropy of the teacher's
  distributions, the entropy of their batch mean, and KL(teacher || student). The cross-entropy DINO minimises is
  h(P_t) + KL(P_t || P_s); Fig. 7 shows the two collapses: with centering only the teacher entropy climbs to its
  maximum log K (uniform), with sharpening only it falls to 0 (one-hot); KL goes to 0 in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

# Healthy L2-normalised outputs read ~1; freshly initialised projection heads already sit at ~0.03 (their outputs
# share a large common direction), so the alarm is below that: 100x under healthy.
STD_RATIO_MIN = 0.01
# Uniform: each sample's teacher distribution is within 1% of log K of the uniform one, i.e. KL(P_t || uniform)
# <= 0.01 log K (0.069 nats at K = 1024). Measured on digits (DINO defaults, 2 local crops, batch 64, 6 steps an
# epoch): with DINO's own recipe (AdamW) the teacher entropy levelled off at 0.976 log K (KL(t||s) 0.14, 40 epochs);
# under the unified SGD recipe it crossed 0.99 at epoch 13 and ended at 0.998 log K with KL 0.009 and the loss at
# log K (6.932 of 6.931 after 60 epochs), the uniform collapse of DINO's Fig. 7. 0.99 sits between the two.
UNIFORM_ENTROPY_FRACTION = 0.99
# One-hot: the batch-mean teacher distribution has fewer than 2 outputs in use (perplexity exp(h) < 2), so every
# sample puts its mass on the same output. Per-sample entropy alone cannot tell this from a healthy sharp teacher,
# whose samples are each near one-hot but on different outputs.
ONE_HOT_BATCH_ENTROPY = math.log(2)


def std_ratio(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised rows x sqrt(D). Shape: z (N, D) -> scalar."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the L2-normalised, then centred rows, 1 .. min(N, D).
    Shape: z (N, D)."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def entropy(probs: torch.Tensor) -> float:
    """Mean over rows of each row's entropy in nats. Shape: probs (N, K), rows summing to 1."""
    # max: a one-hot row's entropy is -0.0 in floating point, shown as "-0.0000"
    return max(0.0, float(torch.special.entr(probs.double()).sum(dim=1).mean()))


def batch_entropy(probs: torch.Tensor) -> float:
    """Entropy of the batch-mean distribution in nats: the outputs the batch uses as a whole. Shape: (N, K)."""
    return entropy(probs.double().mean(dim=0, keepdim=True))


def kl_divergence(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """KL(teacher || student) per row, averaged over rows, in nats. Shape: teacher, student (N, K) probabilities."""
    t, s = teacher.double(), student.double()
    return float((t * (torch.log(t.clamp_min(1e-30)) - torch.log(s.clamp_min(1e-30)))).sum(dim=1).mean())


def signals(outputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The signals of a method's ``collapse_outputs``: always ``embedding`` (N, D); optionally the backbone's
    ``features`` (N, F); for DINO-like methods also ``teacher_probs`` and ``student_probs`` (N, K)."""
    z = outputs["embedding"]
    out = {"embed_std_ratio": round(std_ratio(z), 4), "effective_rank": round(effective_rank(z), 2)}
    if "features" in outputs:
        h = outputs["features"]
        out |= {"feature_std_ratio": round(std_ratio(h), 4), "feature_effective_rank": round(effective_rank(h), 2)}
    if "teacher_probs" in outputs:
        t = outputs["teacher_probs"]
        out |= {"teacher_entropy": round(entropy(t), 4), "teacher_batch_entropy": round(batch_entropy(t), 4),
                "max_entropy": round(math.log(t.shape[1]), 4)}
        if "student_probs" in outputs:
            out["kl_teacher_student"] = round(kl_divergence(t, outputs["student_probs"]), 4)
    return out


def verdict(sig: Mapping[str, float], previous: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """(collapsed, reason) from ``signals``; reason is "" when healthy. The softmax signals speak first: they name
    which collapse (uniform or one-hot); the std ratio catches any method's constant output.

    A softmax collapse must also hold at the previous epoch end (``previous``) without moving back: a freshly built
    DINO head starts near uniform (teacher entropy 0.997 log K after 62 steps of the quick suite) and leaves it as it
    learns, where a collapse stays."""
    kl = f", KL(teacher||student) {sig['kl_teacher_student']:.4f}" if "kl_teacher_student" in sig else ""
    if "teacher_entropy" in sig:
        h, h_max, h_batch = sig["teacher_entropy"], sig["max_entropy"], sig["teacher_batch_entropy"]
        if _uniform(sig) and _uniform(previous) and h >= previous["teacher_entropy"]:
            return True, f"uniform: teacher entropy {h:.4f} of max {h_max:.4f}{kl}"
        if _one_hot(sig) and _one_hot(previous) and h_batch <= previous["teacher_batch_entropy"]:
            return True, f"one-hot: teacher entropy {h:.4f}, batch-mean entropy {h_batch:.4f} < log 2{kl}"
    r = sig["embed_std_ratio"]
    if r < STD_RATIO_MIN:
        return True, f"std ratio {r:.4f} < {STD_RATIO_MIN}: every output is nearly the same vector"
    return False, ""


def _uniform(sig: Mapping[str, float] | None) -> bool:
    return sig is not None and "teacher_entropy" in sig and \
        sig["teacher_entropy"] >= UNIFORM_ENTROPY_FRACTION * sig["max_entropy"]


def _one_hot(sig: Mapping[str, float] | None) -> bool:
    return sig is not None and "teacher_batch_entropy" in sig and sig["teacher_batch_entropy"] < ONE_HOT_BATCH_ENTROPY
