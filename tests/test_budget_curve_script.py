"""scripts/budget_curve.py: each run paired with the floor of its own seed and folder, where each method passes,
and the variant flags (no training here: records are synthetic)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from bench.core.errors import UsageError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "budget_curve.py"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("budget_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(method, seed, knn, linear, epochs=1, steps=62, source=None):
    return {"config": {"method": method, "backbone": "convnet", "seed": seed, "epochs": epochs},
            "metrics": {"knn": {"top1": knn}, "linear": {"top1": linear}}, "status": "ok",
            "training": {"steps": steps}, "_source": source}


def test_gains_are_paired_with_the_floor_of_the_same_seed_and_folder(curve):
    # The suite's floors differ from the curve's own (another protocol version): each run uses its own folder's.
    floors = [record("random", s, 0.70 + s / 100, 0.80) for s in range(3)]
    floors += [record("random", s, 0.66 + s / 100, 0.82, source="suite") for s in range(3)]
    runs = [record("simclr", s, 0.72 + s / 100, 0.83, epochs=16, steps=992) for s in range(3)]
    runs += [record("simclr", s, 0.69 + s / 100, 0.81, epochs=4, steps=248, source="suite") for s in range(3)]
    df = curve.paired(floors + runs, "unified").set_index(["epochs", "metric"])
    assert df.loc[(16, "knn"), "gain"] == pytest.approx(2.0) and df.loc[(16, "knn"), "lo"] == pytest.approx(2.0)
    assert df.loc[(4, "knn"), "gain"] == pytest.approx(3.0) and df.loc[(4, "linear"), "gain"] == pytest.approx(-1.0)
    assert df.loc[(16, "linear"), "gain"] == pytest.approx(3.0)
    assert (df["n"] == 3).all()
    passes = curve.first_pass(df.reset_index())
    assert passes.iloc[0]["passes_at"] == "992 steps" and passes.iloc[0]["steps_measured"] == "248,992"


def test_one_seed_has_no_interval_and_does_not_pass(curve):
    df = curve.paired([record("random", 3, 0.70, 0.80), record("swav", 3, 0.75, 0.85, epochs=128, steps=7936)], "x")
    assert df["lo"].isna().all()
    assert curve.first_pass(df).iloc[0]["passes_at"] == "not by 7936 steps"


def test_method_arg_makes_a_variant_of_one_method(curve):
    configs = curve.configs(_namespace(methods="swav", method_arg=["n_local_crops=0"]))
    assert {c.method for c in configs} == {"random", "swav"}
    assert [c.method_args for c in configs if c.method == "swav"] == [{"n_local_crops": 0}]
    assert all(c.method_args == {} for c in configs if c.method == "random")
    with pytest.raises(UsageError, match="one method"):
        curve.configs(_namespace(methods="swav,simclr", method_arg=["prototypes=512"]))


def _namespace(**given):
    defaults = dict(methods="simclr", epochs="16", seeds="0", batch_size=64, per_class=400, test_per_class=None,
                    set=[], method_arg=[], label="", out="unused", runs="unused", also=[])
    return argparse.Namespace(**{**defaults, **given})
