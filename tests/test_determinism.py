"""--deterministic: the same command gives a bit-identical record (metrics and training curve) twice on CPU.

Across processes this is also checked by tests/test_resume.py (an uninterrupted run against a killed-and-resumed one).
"""

import json

import torch

from bench.config import RunConfig
from bench.runner import run_one
from bench.store import jsonable
from bench.train import seed_everything


def _exact(rec: dict) -> str:
    # JSON text: NaN (top-5 with few classes) compares equal to itself, floats are written to the last bit.
    return json.dumps(jsonable({"metrics": rec["metrics"], "history": rec["training"]["history"]}), sort_keys=True)


def test_same_deterministic_config_twice_is_bit_identical_with_every_protocol(tmp_path):
    cfg = RunConfig(method="simclr", dataset="digits", per_class=20, test_per_class=10, epochs=2, batch_size=50,
                    deterministic=True)
    try:
        a = run_one(cfg, tmp_path / "a", progress=False)
        torch.manual_seed(1234)  # whatever happened before must not matter
        b = run_one(cfg, tmp_path / "b", progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert a["status"] == "ok" and len(a["metrics"]) >= 4  # knn variants, linear, kmeans, few-shot...
    assert _exact(a) == _exact(b)
    assert a["run_id"] == b["run_id"]


def test_deterministic_mode_is_not_inherited_by_the_next_run():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
