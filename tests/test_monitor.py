"""The training-time monitors (bench/monitor.py): kNN every N epochs (last and best) and the online linear probe.

They measure and never change training (bit-identical weights), survive a kill and resume with the same numbers,
land in the record with their keys, and the CLI refuses bad --knn-every values in one line.
"""

import json

import pytest
import torch

import methods
from bench import presets
from bench.cli import build_parser, main
from bench.commands.preset_flags import preset_config
from bench.commands.run import single_config
from bench.config import RunConfig
from bench.data import load_dataset
from bench.runner import context, run_one
from bench.train import Trainer, seed_everything
from methods.base import make_config

SIMCLR = "lightly-cifar10-simclr-e200-b128"
KNN_200 = {"knn": {"variants": [["cosine", "weighted", [200]]], "temperatures": [0.1]}}
MONITOR_KEYS = {"last", "last_epoch", "best", "best_epoch", "evaluations", "selection", "curve"}


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", per_class=12, test_per_class=4)


def _trainer(ds, run_dir, method="simclr", epochs=3, seed_before_build=0, **monitors) -> Trainer:
    cfg = RunConfig(method=method, dataset="digits", epochs=epochs, batch_size=40, protocols=(), deterministic=True,
                    **monitors)
    seed_everything(cfg.seed, True)
    torch.manual_seed(seed_before_build)  # a resumed run rebuilt from another seed relies on its checkpoint alone
    cls = methods.METHODS.get(method)
    return Trainer(cls(context(cfg, ds), make_config(cls, {})), ds, cfg, run_dir, progress=False)


# simclr encodes both views in one call, byol one call per view, moco-v2 one call per BN group.
@pytest.mark.parametrize("method", ["simclr", "byol", "moco-v2"])
def test_monitors_leave_the_trained_weights_bit_identical(tmp_path, digits, method, restore_determinism):
    plain = _trainer(digits, tmp_path / "plain", method)
    plain.fit()
    watched = _trainer(digits, tmp_path / "watched", method, knn_every=1, online_linear=True)
    watched.fit()
    assert watched.monitor.linear.steps == watched.state.step > 0  # the head did train beside the method
    assert plain.state.history == [{k: v for k, v in e.items() if k not in ("monitor_knn", "online_linear")}
                                   for e in watched.state.history]
    want, got = plain.method.state_dict(), watched.method.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True, msg=f"{method}: {k} differs")


class Killed(Exception):
    pass


@pytest.mark.parametrize("where", ["after the 2nd checkpoint", "in the middle of epoch 3"])
def test_killed_then_resumed_gives_the_same_monitor_metrics(tmp_path, digits, monkeypatch, where, restore_determinism):
    monitors = {"knn_every": 2, "online_linear": True, "epochs": 4}
    full = _trainer(digits, tmp_path / "full", **monitors)
    full.fit()
    save, step = Trainer.save, Trainer.step

    def save_then_die(self):
        save(self)
        if self.state.epoch == 2:
            raise Killed

    def die_mid_epoch(self, batch):
        if self.state.step == 2 * self.steps_per_epoch + 1:
            raise Killed
        return step(self, batch)

    if where.startswith("after"):
        monkeypatch.setattr(Trainer, "save", save_then_die)
    else:
        monkeypatch.setattr(Trainer, "step", die_mid_epoch)
    with pytest.raises(Killed):
        _trainer(digits, tmp_path / "cut", **monitors).fit()
    monkeypatch.setattr(Trainer, "save", save)
    monkeypatch.setattr(Trainer, "step", step)
    resumed = _trainer(digits, tmp_path / "cut", seed_before_build=99, **monitors)
    resumed.fit(resume=True)
    assert resumed.monitor.metrics() == full.monitor.metrics()
    assert resumed.state.history == full.state.history
    for k, v in full.monitor.linear.head.state_dict().items():
        assert torch.equal(v, resumed.monitor.linear.head.state_dict()[k]), k


def test_record_holds_last_and_best_with_their_epochs(tmp_path):
    cfg = RunConfig(method="simclr", dataset="digits", per_class=12, test_per_class=4, epochs=5, batch_size=40,
                    protocols=("knn",), protocol_args=KNN_200, knn_every=2, online_linear=True)
    rec = run_one(cfg, tmp_path, progress=False)
    knn, lin = rec["metrics"]["monitor_knn"], rec["metrics"]["online_linear"]
    assert MONITOR_KEYS | {"key", "every"} <= knn.keys() and MONITOR_KEYS | {"lr"} <= lin.keys()
    assert knn["key"] == "knn_k200_t0.1" and knn["k"] == 200 and knn["temperature"] == 0.1 and knn["every"] == 2
    assert [e for e, _ in knn["curve"]] == [2, 4, 5] and knn["evaluations"] == 3  # every 2nd epoch and the last
    assert [e for e, _ in lin["curve"]] == [1, 2, 3, 4, 5] and lin["evaluations"] == 5
    for entry in (knn, lin):
        assert entry["last_epoch"] == 5 and entry["last"] == entry["curve"][-1][1]
        assert entry["best"] >= entry["last"] and entry["best"] == max(t for _, t in entry["curve"])
        assert [entry["best_epoch"], entry["best"]] in entry["curve"] and "test set" in entry["selection"]
    # The offline knn protocol after training runs with the same settings and scores the same final model.
    assert rec["metrics"]["knn_k200_t0.1"]["top1"] == knn["last"]
    by_epoch = {e["epoch"]: e for e in rec["training"]["history"]}
    assert [by_epoch[e]["monitor_knn"] for e, _ in knn["curve"]] == [t for _, t in knn["curve"]]
    assert "monitor_knn" not in by_epoch[1] and "monitor_knn" not in by_epoch[3]
    assert json.loads((next(tmp_path.glob("runs/adhoc/*/record.json"))).read_text())["metrics"]["monitor_knn"] == knn


def test_online_probe_learns_beside_supervised_training(tmp_path):
    cfg = RunConfig(method="supervised", dataset="digits", per_class=30, test_per_class=20, epochs=4, batch_size=50,
                    protocols=(), online_linear=True, deterministic=True)
    try:
        lin = run_one(cfg, tmp_path, progress=False)["metrics"]["online_linear"]
    finally:
        torch.use_deterministic_algorithms(False)
    assert lin["steps"] == 4 * 6 and lin["skipped_steps"] == 0
    assert lin["last"] > 0.3, lin["curve"]  # ten classes: chance is 0.1 (measured 0.52 at epoch 4)


def test_method_without_sgd_epochs_gets_one_knn_and_a_skipped_probe(tmp_path):
    cfg = RunConfig(method="raw", dataset="digits", per_class=12, test_per_class=4, batch_size=40, protocols=("knn",),
                    protocol_args=KNN_200, knn_every=1, online_linear=True)
    m = run_one(cfg, tmp_path, progress=False)["metrics"]
    assert m["monitor_knn"]["curve"] == [[0, m["knn_k200_t0.1"]["top1"]]] and m["monitor_knn"]["evaluations"] == 1
    assert set(m["online_linear"]) == {"skipped"}


def test_no_monitor_no_entries_and_no_checkpoint_state(tmp_path, digits, restore_determinism):
    t = _trainer(digits, tmp_path, epochs=1)
    t.fit()
    assert t.monitor is None and "monitor_s" not in t.summary()
    assert all("monitor_knn" not in e and "online_linear" not in e for e in t.state.history)


def test_flags_override_a_preset_and_reach_a_single_run():
    cfg = preset_config(parse("--preset", SIMCLR, "--knn-every", "0", "--online-linear"))
    assert cfg.knn_every == 0 and cfg.online_linear
    assert preset_config(parse("--preset", SIMCLR)).knn_every == 1
    one = single_config(parse("--method", "simclr", "--dataset", "digits", "--knn-every", "5"))
    assert one.knn_every == 5 and not one.online_linear


def parse(*argv: str):
    return build_parser("run").parse_args(["run", *argv])


@pytest.mark.parametrize("value", ["-1", "x", "100001", "2.5"])
def test_bad_knn_every_is_one_line_and_exit_2(tmp_path, capsys, value):
    out = tmp_path / "out"
    assert main(["run", "--method", "simclr", "--dataset", "digits", "--knn-every", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--knn-every" in err and "Traceback" not in err
    assert not out.exists()


def test_lightly_presets_track_the_best_knn_epoch_as_published():
    names = [n for n in presets.names() if n.startswith("lightly-cifar10-")]
    assert len(names) == 21
    for name in names:
        data = presets.read(presets.path_of(name))
        cfg = presets.to_config(data, name)
        assert cfg.knn_every == 1 and cfg.protocol_args == KNN_200 and "knn" in cfg.protocols, name
        assert data["published"]["metric"] == "monitor_knn.best", name
        assert "T=0.07" not in data["published"]["notes"] and "no field for protocol settings" not in data["published"]["notes"]
