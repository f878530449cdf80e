"""Frozen run configs. An ablation is ``dataclasses.replace``; a trained model is identified by its config's key."""

from __future__ import annotations

import hashlib
import json
import math
import reprlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bench.core.errors import UsageError
from methods.spec import UNIFIED_RECIPE, Recipe, check, opt

# Labels of a run, not inputs to it: they decide where a record goes and which metrics it holds, not what the
# trained model is.
NOT_IN_KEY = ("suite", "protocols", "protocol_args", "knn_every", "online_linear")
# Fields added after records were written: hashed only when set, so every older config keeps its key.
KEYED_WHEN_SET = {"image_size": None, "protocol_args": {}, "knn_every": 0, "online_linear": False, "precision": "bf16",
                  "sync_bn": True}
PRECISIONS = ("bf16", "fp16", "fp32")
RECIPE_KEYED_WHEN_SET = {"decay_norm_bias": False}


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    backbone: str = "convnet"
    # The bounds of the CLI's flags, for configs that come from elsewhere (records, suites, grids, searches).
    epochs: int = opt(1, ge=1, le=100_000)
    batch_size: int = opt(256, ge=2, le=1 << 20)
    seed: int = opt(0, ge=0, le=2**31 - 1)
    device: str = "cpu"
    recipe: Recipe = UNIFIED_RECIPE
    recipe_name: str = "unified"  # unified | paper | search | tuned, +custom with overrides; tables group by it
    method_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    per_class: int | None = opt(None, ge=1)  # training subset: this many images per class
    test_per_class: int | None = opt(None, ge=1)
    protocols: tuple[str, ...] | None = None  # None: every registered protocol
    suite: str = "adhoc"
    deterministic: bool = False
    # bf16 autocast where bf16 is native (CUDA, or a CPU with AMX / AVX512-BF16), except on a CPU for models
    # that run slower so (Method.float32_on_cpu: the ViT).
    amp: bool = True
    # bf16: the autocast above; fp16: float16 autocast with a gradient scaler; fp32: no autocast. ``amp=False``
    # (older records) means fp32 whatever this says.
    precision: str = opt("bf16", choices=PRECISIONS)
    # Side, in pixels, the dataset is decoded or resized to at load; None: the dataset's own (folder trees: 64).
    image_size: int | None = opt(None, ge=8, le=1024)
    # Keyword settings per protocol, e.g. {"knn": {"variants": [["cosine", "weighted", [200]]], "temperatures": [0.1]}}.
    protocol_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Measured during training, never changing it: the knn protocol every N epochs (0: off), reported at the last
    # and the best evaluated epoch, and a linear head trained online on the encoder's detached features.
    knn_every: int = opt(0, ge=0, le=100_000)
    online_linear: bool = False
    # Under DDP (several ranks), BatchNorm's statistics are the global batch's, so W ranks train the 1-process
    # model; False: each rank normalises its own slice (the per-GPU BN of a plain DDP job). One process: no effect.
    sync_bn: bool = True

    def __post_init__(self) -> None:
        """Every field by its annotation and declaration, the recipe by its own, and no NaN or infinity in the
        method's or backbone's arguments (a record holding one would not be JSON)."""
        check(self, "run config")
        check(self.recipe, "recipe")
        for name, settings in self.protocol_args.items():
            if not isinstance(settings, dict):
                raise UsageError(f"protocol_args {name}={reprlib.repr(settings)} should be a table of that protocol's "
                                 "settings, e.g. protocol_args.knn = {temperatures = [0.1]}")
        for name, args in (("method_args", self.method_args), ("backbone_args", self.backbone_args),
                           ("protocol_args", self.protocol_args)):
            for key, value in args.items():
                if not _finite(value):
                    raise UsageError(f"{name} {key}={reprlib.repr(value)} is not a finite number; give a finite value")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A short hash of what changes the trained model: every field but the labels of ``NOT_IN_KEY``."""
        return _hash({k: v for k, v in _keyed(self.to_dict()).items() if k not in NOT_IN_KEY})

    def legacy_key(self) -> str:
        """The key of records and checkpoints written before the labels left the hash (every field hashed)."""
        return _hash(_keyed(self.to_dict()))

    def accepted_keys(self) -> tuple[str, str]:
        """Every key this config's records and checkpoints may carry, the current one first."""
        return self.key(), self.legacy_key()

    def run_id(self, key: str | None = None) -> str:
        return f"{self.method}-{self.backbone}-{self.dataset}-s{self.seed}-{key or self.key()}"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> RunConfig:
        """The config a record.json holds (JSON lists back to tuples); one clear line when it holds none."""
        try:
            known = {f.name for f in fields(cls)}
            d = {k: v for k, v in d.items() if k in known}
            d["recipe"] = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("recipe", {}).items()})
            if d.get("protocols") is not None:
                d["protocols"] = tuple(d["protocols"])
            return cls(**d)
        except (TypeError, AttributeError, UsageError) as err:
            raise UsageError(f"{where} holds no valid run config ({err}); is it a repbench record.json?") from None


@dataclass(frozen=True)
class TrainOptions:
    """How the loop runs and reports, not what it trains (so not in a config's key): ``compile`` the method's
    training step with torch.compile; ``log`` sinks beside steps.csv (tensorboard, wandb); host reads of the
    step's losses and meters every ``log_every`` steps and at each epoch's end; ``lines``: a progress line at
    each read to stderr (for logs that are not a terminal)."""

    compile: bool = False
    log: tuple[str, ...] = ()
    log_every: int = opt(50, ge=1, le=1_000_000)
    lines: bool = False

    def __post_init__(self) -> None:
        check(self, "train options")


def _keyed(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k not in KEYED_WHEN_SET or v != KEYED_WHEN_SET[k]}
    out["recipe"] = {k: v for k, v in d["recipe"].items()
                     if k not in RECIPE_KEYED_WHEN_SET or v != RECIPE_KEYED_WHEN_SET[k]}
    return out


def _finite(value: Any) -> bool:
    """False when ``value`` is, or holds at any depth, a NaN or infinite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        value = list(value.values())
    return all(_finite(v) for v in value) if isinstance(value, (list, tuple)) else True


def _hash(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
