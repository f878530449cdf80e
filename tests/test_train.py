"""The training loop: it learns, checkpoints atomically, resumes to the same state, and flags trouble."""

import pytest
import torch

import methods
from bench.config import Recipe, RunConfig
from bench.core.device import native_bf16
from bench.data import load_dataset
from bench.optim import LARS, apply_recipe_step, build_optimizer, build_scheduler, lr_factor, weight_decay_at
from bench.runner import context
from bench.train import CHECKPOINT, COLLAPSE_STD_RATIO, Trainer, collapse_stats, seed_everything
from methods.base import make_config


def _trainer(tmp_path, method="simclr", epochs=2, **kw):
    ds = load_dataset("digits", per_class=40)
    cfg = RunConfig(method=method, dataset="digits", epochs=epochs, batch_size=64, protocols=(), **kw)
    seed_everything(cfg.seed)
    cls = methods.METHODS.get(method)
    m = cls(context(cfg, ds), make_config(cls, cfg.method_args))
    return Trainer(m, ds, cfg, tmp_path, progress=False)


def test_supervised_learns_and_meter_counts(tmp_path):
    t = _trainer(tmp_path, "supervised", epochs=4, recipe=Recipe(lr=0.2))
    state = t.fit()
    losses = [h["loss"] for h in state.history]
    assert state.status == "ok" and len(losses) == 4
    assert losses[-1] < losses[0]
    s = t.meter.summary()
    assert s["images"] == 4 * 6 * 64 and s["images_per_s"] > 0 and 0 <= s["data_wait_share"] < 1
    assert (tmp_path / CHECKPOINT).exists()


def test_resume_reaches_the_same_weights(tmp_path):
    full = _trainer(tmp_path / "a", epochs=2)
    full.fit()
    first = _trainer(tmp_path / "b", epochs=2)
    first.method.train()  # stop after one epoch, as a killed run would, by running it by hand
    first.run_epoch(0)
    first.state.epoch = 1
    first.save()
    resumed = _trainer(tmp_path / "b", epochs=2)
    torch.manual_seed(12345)  # a resumed run must not depend on the RNG state it starts with
    resumed.fit(resume=True)
    for (k, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_diverged_run_is_marked(tmp_path):
    t = _trainer(tmp_path, "simclr", epochs=2)
    t.method.training_step = lambda batch: {"loss": torch.tensor(float("nan"), requires_grad=True)}
    state = t.fit()
    assert state.status == "diverged" and state.status_detail["step"] == 1


def test_collapse_watchdog_flags_a_constant_encoder(tmp_path):
    t = _trainer(tmp_path, "simclr")
    probe = t.probe
    healthy = collapse_stats(t.method, probe)
    t.method.embed = lambda x: torch.ones(len(x), 16) + 1e-6 * torch.randn(len(x), 16)
    collapsed = collapse_stats(t.method, probe)
    assert healthy["embed_std_ratio"] > 2 * COLLAPSE_STD_RATIO  # even an untrained head is not flagged
    assert collapsed["embed_std_ratio"] < COLLAPSE_STD_RATIO / 10


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_drops_tenfold_at_each_milestone():
    # MoCo v1 / InstDisc: x0.1 at epochs 120 and 160 of 200.
    assert [lr_factor(s, 200, 0, "step", (0.6, 0.8)) for s in (0, 119, 120, 159, 160, 199)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_paper_recipe_groups_fixed_rate_and_bias_scale():
    """SimSiam's predictor keeps its rate while the rest decays; Barlow Twins' biases/BN get 0.0048 / 0.2 of it."""
    ctx_ds = load_dataset("digits", per_class=5)
    for name in ("simsiam", "barlowtwins"):
        cls = methods.METHODS.get(name)
        cfg = RunConfig(method=name, dataset="digits", batch_size=256)
        m = cls(context(cfg, ctx_ds), make_config(cls, {}))
        opt = build_optimizer(m, cls.paper_recipe, 256)
        sched = build_scheduler(opt, cls.paper_recipe, total_steps=100, steps_per_epoch=10)
        grouped = sum(len(g["params"]) for g in opt.param_groups)
        assert grouped == sum(1 for p in m.parameters() if p.requires_grad)
        base = {id(g): g["initial_lr"] for g in opt.param_groups}  # the rate before warm-up and schedule
        for _ in range(60):
            opt.step()
            sched.step()
        for g in opt.param_groups:
            if g["fixed_lr"]:
                assert g["lr"] == pytest.approx(base[id(g)])
            else:
                assert g["lr"] < 0.5 * base[id(g)]
        if name == "simsiam":
            pred = {id(p) for p in m.predictor.parameters()}
            fixed = {id(p) for g in opt.param_groups if g["fixed_lr"] for p in g["params"]}
            assert fixed == pred
        else:
            lrs = {g["decay"]: g["initial_lr"] for g in opt.param_groups}
            assert lrs[False] == pytest.approx(lrs[True] * 0.0048 / 0.2)


def test_dino_recipe_clips_each_parameter_and_schedules_weight_decay():
    r = methods.METHODS.get("dino").paper_recipe
    assert weight_decay_at(0, 100, r) == pytest.approx(0.04)
    assert weight_decay_at(50, 100, r) == pytest.approx(0.22)
    assert weight_decay_at(100, 100, r) == pytest.approx(0.4)
    big, small = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    big.grad, small.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4, 0.0])
    opt = torch.optim.AdamW([{"params": [big, small], "weight_decay": 0.04, "decay": True}], lr=1.0)
    apply_recipe_step(opt, [big, small], 50, 100, r)
    assert big.grad.norm().item() == pytest.approx(3.0)  # clipped on its own
    assert small.grad.norm().item() == pytest.approx(0.5)  # untouched: not scaled with the global norm
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.22)


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=1.0, momentum=0.0, eta=0.001)
    w.grad = torch.full((4, 4), 0.5)
    opt.step()
    # step = lr * eta * ||w|| / ||g|| * g = 0.001 * 8 / 2 * 0.5 = 0.002
    assert torch.allclose(w, torch.full((4, 4), 2.0 - 0.002))


def test_cpu_autocast_is_kept_off_for_the_vit(tmp_path):
    vit = _trainer(tmp_path / "vit", method="mae", epochs=1)
    conv = _trainer(tmp_path / "conv", method="simclr", epochs=1)
    assert vit.method.float32_on_cpu() and not conv.method.float32_on_cpu()
    assert vit.amp is False  # on any CPU, AMX or not
    assert conv.amp == native_bf16(torch.device("cpu"))
    assert _trainer(tmp_path / "off", method="simclr", epochs=1, amp=False).amp is False
