"""Frozen run configs. An ablation is ``dataclasses.replace``; a trained model is identified by its config's key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bench.core.errors import UsageError
from methods.spec import UNIFIED_RECIPE, Recipe

# Labels of a run, not inputs to it: they decide where a record goes and which metrics it holds, not what the
# trained model is.
NOT_IN_KEY = ("suite", "protocols")


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    backbone: str = "convnet"
    epochs: int = 1
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    recipe: Recipe = UNIFIED_RECIPE
    recipe_name: str = "unified"  # unified | paper | search | tuned, +custom with overrides; tables group by it
    method_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    per_class: int | None = None  # training subset: this many images per class
    test_per_class: int | None = None
    protocols: tuple[str, ...] | None = None  # None: every registered protocol
    suite: str = "adhoc"
    deterministic: bool = False
    # bf16 autocast where bf16 is native (CUDA, or a CPU with AMX / AVX512-BF16), except on a CPU for models
    # that run slower so (Method.float32_on_cpu: the ViT).
    amp: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A short hash of what changes the trained model: every field but the labels of ``NOT_IN_KEY``."""
        return _hash({k: v for k, v in self.to_dict().items() if k not in NOT_IN_KEY})

    def legacy_key(self) -> str:
        """The key of records and checkpoints written before the labels left the hash (every field hashed)."""
        return _hash(self.to_dict())

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
        except (TypeError, AttributeError) as err:
            raise UsageError(f"{where} holds no valid run config ({err}); is it a repbench record.json?") from None


def _hash(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
