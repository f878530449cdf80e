"""Every trainable registered method on digits, plus step-by-step checks of the self-supervised machinery
(EMA teachers, DINO centering and temperature, MoCo queue, InstDisc memory bank, SwAV queue).

Batches are built here (Augmenter + Batch) rather than through the training loop, with a narrow convnet
and N=8 so that the file stays fast on two shared cores.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bench.augment import Augmenter, normalise
from bench.data import load_dataset
from bench.optim import build_optimizer
from methods import METHODS
from methods.base import Batch, Context, TextTower, make_config
from methods.ema import EMA, cosine_momentum
from methods.losses.swav import swav_loss
from methods.spec import UNIFIED_RECIPE, Recipe

SMALL_CONVNET = {"widths": (8, 16, 16, 32)}
N = 8
TRAINABLE = [n for n, cls in METHODS.items() if cls.trained_by == "sgd"]
CASES = [(n, {}) for n in TRAINABLE] + [("instdisc", {"loss": "nce"})]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: with 2 OpenMP threads on 2 shared, busy cores each op spin-waits (3 MoCo steps
    took 4.9 s of CPU with 2 threads, 0.09 s with 1, measured here). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds, ds.mean_std()


def build(name, ds, overrides=None, total_steps=20, seed=0, backbone="convnet", backbone_args=None):
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    ctx = Context(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                  num_train=len(ds.train_y), backbone=backbone,
                  backbone_args=SMALL_CONVNET if backbone_args is None else backbone_args,
                  total_steps=total_steps, train_text=ds.train_text, class_names=tuple(ds.classes))
    return cls(ctx, make_config(cls, overrides or {})).train()


def make_batch(method, digits, seed, n=N):
    ds, (mean, std) = digits
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.train_y), generator=g)[:n]
    torch.manual_seed(seed)
    aug = Augmenter(method.views, ds.channels, ds.image_size, mean, std)
    x = ds.train_x[idx]
    tokens = method.train_tokens if isinstance(method, TextTower) else None
    return Batch(views=aug(x), images=normalise(x, mean, std), labels=ds.train_y[idx], index=idx,
                 text=tokens[idx] if tokens is not None else None)


def seeded_loss(method, batch, seed=123):
    """The loss with the method's own randomness (shuffled BN, noise samples) fixed."""
    torch.manual_seed(seed)
    return method.training_step(batch)["loss"]


def backbones(method):
    """Every trainable backbone in the method (modules exposing feature_dim)."""
    return [m for m in method.modules() if hasattr(m, "feature_dim") and any(p.requires_grad for p in m.parameters())]


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name,overrides", CASES, ids=[n + ("-" + "-".join(map(str, o.values())) if o else "")
                                                       for n, o in CASES])
def test_loss_descends_on_a_fixed_batch_and_reaches_the_backbone(name, overrides, digits):
    """Gradient steps on one fixed batch must lower its loss (the loss is wired to the weights with the
    right sign). Auxiliary state (queues, banks, teachers, centers) is held still: on a fixed batch a
    queue would fill with copies of the positives and make the loss rise for a reason that is not a bug."""
    method = build(name, digits[0], overrides)
    batch = make_batch(method, digits, seed=1)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for i in range(6):
        loss = seeded_loss(method, batch)
        assert torch.isfinite(loss), f"{name}: non-finite loss {loss} at step {i}"
        opt.zero_grad()
        loss.backward()
        if i == 0:
            nets = backbones(method)
            assert nets, f"{name}: no trainable backbone found"
            for net in nets:
                grads = [p.grad for p in net.parameters() if p.requires_grad]
                assert all(g is not None for g in grads), f"{name}: some backbone weights got no gradient"
                assert sum(float(g.abs().sum()) for g in grads) > 0, f"{name}: zero gradient at the backbone"
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], f"{name}: loss did not decrease: {losses}"


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_with_state_updates_moves_the_encoder_and_a_checkpoint_restores_everything(name, digits):
    """A few steps through the paper recipe's optimiser and on_step_end, then a state_dict round trip into a
    differently initialised instance: the same batch must give the same loss, so every piece of state
    the loss depends on (EMA teacher, queue, bank, center, step counters) is in the checkpoint."""
    ds = digits[0]
    method = build(name, ds, total_steps=4)
    opt = build_optimizer(method, METHODS.get(name).paper_recipe, N)
    start = copy.deepcopy(method.encoder.state_dict())
    for step in range(1, 5):
        loss = seeded_loss(method, make_batch(method, digits, seed=10 + step))
        assert torch.isfinite(loss), f"{name}: non-finite loss at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 4)
    moved = [k for k, v in method.encoder.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved, f"{name}: the encoder did not change in training"

    batch = make_batch(method, digits, seed=99)
    z = method.embed(batch.images)
    assert z.ndim == 2 and len(z) == N and torch.isfinite(z).all()
    restored = build(name, ds, total_steps=4, seed=7)
    restored.load_state_dict(method.state_dict())
    with torch.no_grad():
        assert torch.allclose(seeded_loss(restored, batch), seeded_loss(method, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["moco-v3", "dino"])
def test_vit_backbone(name, digits):
    overrides = {"n_local_crops": 2} if name == "dino" else {}
    method = build(name, digits[0], overrides, backbone="vit", backbone_args={"depth": 1})
    loss = seeded_loss(method, make_batch(method, digits, seed=3))
    loss.backward()
    assert torch.isfinite(loss)
    vit = [m for m in backbones(method) if type(m).__name__ == "ViT"]
    assert vit and all(p.grad is not None for p in vit[0].parameters())


@pytest.mark.parametrize("backbone,args,head_bn,expected", [
    ("convnet", None, None, True), ("vit", {"depth": 1}, None, False), ("convnet", None, False, False),
    ("vit", {"depth": 1}, True, True)])
def test_dino_head_bn_follows_the_backbone_unless_set(backbone, args, head_bn, expected, digits):
    overrides = {} if head_bn is None else {"head_bn": head_bn}
    method = build("dino", digits[0], overrides, backbone=backbone, backbone_args=args)
    assert method.cfg.head_bn is expected  # the resolved value is what the record's method_config shows
    for head in (method.student_head, method.teacher.target[1]):
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) is expected


# --------------------------------------------------------------------------- EMA

def test_cosine_momentum_schedule():
    assert cosine_momentum(0.0, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(0.5, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(1.0, 0.996) == pytest.approx(1.0)


def test_ema_update_and_schedule():
    online = torch.nn.Linear(3, 2)
    ema = EMA(online, momentum=0.9, final=1.0)
    assert not any(p.requires_grad for p in ema.parameters())
    before = [p.clone() for p in ema.target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    m = ema.update(online, step=1, total=10)
    assert m == pytest.approx(0.9)  # step 1 of 10 is progress 0
    for b, t, o in zip(before, ema.target.parameters(), online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    assert ema.momentum(10, 10) == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.9) + 1) / 2)
    assert EMA(online, momentum=0.999).momentum(7, 10) == 0.999


# --------------------------------------------------------------------------- DINO


def test_dino_center_teacher_and_temperature_step_by_step(digits):
    total = 100  # freeze_last_layer 0.01 -> the first step is frozen; teacher temp warms up over 10 steps
    method = build("dino", digits[0], {"n_local_crops": 2}, total_steps=total)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    last_v = method.student_head.last_layer.parametrizations.weight.original1
    for step in range(1, 4):
        batch = make_batch(method, digits, seed=step)
        center = method.center.clone()
        teacher = [p.clone() for p in method.teacher.parameters()]
        loss = method.training_step(batch)["loss"]
        with torch.no_grad():
            batch_center = method.teacher(torch.cat(batch.views[:2])).mean(0, keepdim=True)
        opt.zero_grad()
        loss.backward()
        assert (last_v.grad is None) == (step == 1), "last layer frozen exactly for the first 1% of training"
        opt.step()
        method.on_step_end(step, total)
        assert torch.allclose(method.center, 0.9 * center + 0.1 * batch_center, atol=1e-6)
        m = 1 - (1 - 0.996) * (math.cos(math.pi * (step - 1) / total) + 1) / 2
        student = list(method.student_backbone.parameters()) + list(method.student_head.parameters())
        for t0, t1, s in zip(teacher, method.teacher.parameters(), student, strict=True):
            assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert method.encoder is method.teacher.target[0]
    assert [method.teacher_temp(s) for s in (0, 5, 10, 50)] == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_multicrop_views(digits):
    ds = digits[0]
    ctx28 = Context(in_channels=1, image_size=28, num_classes=10, num_train=100, backbone_args=SMALL_CONVNET)
    for name, n_local, scale in (("dino", 8, (0.05, 0.4)), ("swav", 6, (0.05, 0.14))):
        cls = METHODS.get(name)
        views = cls(ctx28, cls.Config()).views
        assert len(views) == 2 + n_local
        assert all(v.size is None for v in views[:2]) and all(v.size == 12 and v.scale == scale for v in views[2:])
        small = build(name, ds).views  # 8x8 digits: local crops stay at the convnet's minimum of 8
        assert all(v.size == 8 for v in small[2:])


# --------------------------------------------------------------------------- MoCo


def test_moco_queue_sizes_are_scaled_and_recorded(digits):
    ds = digits[0]
    assert build("moco-v1", ds).cfg.queue_size == len(ds.train_y) // 2
    assert build("moco-v2", ds).cfg.queue_size == len(ds.train_y) // 2
    v3 = build("moco-v3", ds)
    assert v3.cfg.queue_size == 0 and not hasattr(v3, "queue") and v3.cfg.temperature == 1.0


def test_moco_enqueues_normalised_keys_and_wraps(digits):
    method = build("moco-v2", digits[0], {"queue_size": 20, "shuffle_bn_groups": 1})
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    for step in range(1, 4):
        batch = make_batch(method, digits, seed=step)
        loss = method.training_step(batch)["loss"]
        with torch.no_grad():
            keys = F.normalize(method.key_encoder(batch.views[1]), dim=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 3)
    rows = [(16 + i) % 20 for i in range(N)]
    assert torch.allclose(method.queue[rows], keys, atol=1e-6)
    assert int(method.queue_ptr) == 4


# --------------------------------------------------------------------------- InstDisc


def test_instdisc_memory_bank_update(digits):
    method = build("instdisc", digits[0], {"loss": "nce"})
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    assert torch.isnan(method.log_z)
    batch = make_batch(method, digits, seed=5)
    old = method.bank[batch.index].clone()
    loss = method.training_step(batch)["loss"]
    with torch.no_grad():
        f = method.embed(batch.views[0])
    log_z = float(method.log_z)
    assert math.isfinite(log_z)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.on_step_end(1, 10)
    assert torch.allclose(method.bank[batch.index], F.normalize(0.5 * old + 0.5 * f, dim=1), atol=1e-6)
    method.training_step(make_batch(method, digits, seed=6))
    assert float(method.log_z) == log_z, "Z is estimated once and then held fixed"


# --------------------------------------------------------------------------- SwAV


def test_swav_queue_fills_then_feeds_sinkhorn(digits):
    method = build("swav", digits[0], {"queue_length": 16, "n_local_crops": 2, "queue_start": 0.05}, total_steps=20)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    counts = []
    for step in range(1, 5):  # queue_start 0.05 x 20 steps -> filled from the second step on
        loss = method.training_step(make_batch(method, digits, seed=step))["loss"]
        assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(method.cfg.prototypes), atol=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 20)
        counts.append(int(method.queue_count))
    assert counts == [0, 8, 16, 16]
    assert torch.allclose(method.queue.norm(dim=-1), torch.ones(2, 16), atol=1e-5)
    # With a full queue the loss is swav_loss with the queue's scores in Sinkhorn.
    batch = make_batch(method, digits, seed=9)
    queue = method.queue.clone()
    got = method.training_step(batch)["loss"]
    with torch.no_grad():
        w = method.prototypes.weight
        assert len({v.shape for v in batch.views}) == 1  # 8x8 digits: all crops share one forward pass
        z = F.normalize(method.projector(method.encoder(torch.cat(batch.views))), dim=1)
        expected = swav_loss((z @ w.T).chunk(4), 0.1, 0.05, 3, (0, 1), [queue[0] @ w.T, queue[1] @ w.T])
    assert torch.allclose(got, expected, atol=1e-5)


SSL = ["moco-v1", "moco-v2", "moco-v3", "instdisc", "dino", "byol", "simsiam", "barlowtwins", "vicreg", "swav"]


@pytest.mark.parametrize("name", SSL)
def test_ssl_methods_declare_their_paper_recipe_and_a_frozen_config(name):
    cls = METHODS.get(name)
    assert isinstance(cls.paper_recipe, Recipe) and cls.paper_recipe != UNIFIED_RECIPE
    with pytest.raises(AttributeError):
        cls.Config().temperature = 0.5


@pytest.mark.parametrize("name", SSL)
def test_bf16_autocast_step(name, digits):
    """The loop trains under bf16 autocast on CUDA; CPU autocast exercises the same casts. Losses come back in
    float32 (they upcast: cosines near 1 and sums of D^2 terms are below bf16's resolution) and the state
    updates accept bf16 activations."""
    method = build(name, digits[0])
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    for step in (1, 2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = seeded_loss(method, make_batch(method, digits, seed=step))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 20)
