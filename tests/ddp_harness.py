"""Runs a method's first training steps in one process and in W gloo processes on the same global batch, for the
DDP equality tests.

A ``Case`` is a run config (a tiny convnet on ``digits``) and one FIXED global batch of views, augmented once here
and sent to every rank, so the only difference between the runs is where the rows are computed. Each rank takes
its rows (bench.ddp.shard_batch), BatchNorm is synchronised (bench.ddp.convert_sync_batchnorm), gradients are
averaged (bench.ddp.average_gradients) and the loss reported is the mean over ranks (bench.ddp.mean_loss).

    cases = [make_case("simclr"), make_case("byol")]
    multi = run_ranks(cases, world=2)          # one fork of W processes runs every case in turn
    for case, got in zip(cases, multi):
        assert_same(run_single(case), got)
"""

from __future__ import annotations

import io
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.multiprocessing as mp

from bench import ddp
from bench.augment import Augmenter, normalise
from bench.config import RunConfig
from bench.data import load_dataset
from bench.optim import apply_recipe_step, build_optimizer
from bench.runner import build_method
from methods.base import Batch, TextTower

SMALL_CONVNET = {"widths": (8, 16, 16, 32)}
STEPS = 3
TIMEOUT_S = 240


@dataclass
class Case:
    cfg: RunConfig
    batch: Batch
    steps: int = STEPS
    label: str = field(default="")


def tiny_config(method: str, method_args: dict | None = None, batch_size: int = 16, seed: int = 0) -> RunConfig:
    """fp32 (no autocast) so that the runs agree to float32 round-off."""
    return RunConfig(method=method, dataset="digits", per_class=10, test_per_class=5, batch_size=batch_size,
                     seed=seed, amp=False, backbone_args=dict(SMALL_CONVNET), method_args=dict(method_args or {}))


def _dataset(cfg: RunConfig):
    return load_dataset(cfg.dataset, None, cfg.per_class, cfg.test_per_class, cfg.image_size)


def make_case(method: str, method_args: dict | None = None, batch_size: int = 16, seed: int = 0) -> Case:
    """The config and its fixed global batch: the first ``batch_size`` images of a seeded permutation, augmented."""
    cfg = tiny_config(method, method_args, batch_size, seed)
    ds = _dataset(cfg)
    model = build_method(cfg, ds)
    mean, std = ds.mean_std()
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(seed))[:batch_size]
    torch.manual_seed(seed + 1)
    x = ds.train_x[idx]
    tokens = model.train_tokens if isinstance(model, TextTower) else None
    batch = Batch(views=Augmenter(model.views, ds.channels, ds.image_size, mean, std)(x), images=normalise(x, mean, std),
                  labels=ds.train_y[idx], index=idx, text=tokens[idx] if tokens is not None else None)
    return Case(cfg, batch, label=method + (f"{method_args}" if method_args else ""))


def train_steps(case: Case, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The case's steps in this process (on its rank's rows when in a process group): per-step global loss and
    averaged gradients, and the parameters and buffers after the last step. ``dtype`` float64: the reference that
    measures the float32 runs' own round-off."""
    cfg = case.cfg
    method = ddp.batchnorm_across_ranks(build_method(cfg, _dataset(cfg)).to(dtype), cfg.sync_bn)
    ddp.broadcast_state(method)
    method.train()
    opt = build_optimizer(method, cfg.recipe, cfg.batch_size)
    b = case.batch
    batch = ddp.shard_batch(replace(b, views=[v.to(dtype) for v in b.views], images=b.images.to(dtype)))
    torch.manual_seed(cfg.seed + 2)  # the methods' own draws (noise samples, masks): the same on every rank
    losses, grads = [], []
    for step in range(case.steps):
        loss = method.training_step(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(method.parameters())
        apply_recipe_step(opt, method.parameters(), step, case.steps, cfg.recipe)
        losses.append(float(ddp.mean_loss(loss.detach())))
        grads.append({n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None})
        opt.step()
        method.on_step_end(step + 1, case.steps)
    return {"losses": losses, "grads": grads, "params": {n: p.detach().clone() for n, p in method.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in method.named_buffers()}}


def run_single(case: Case, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    return train_steps(case, dtype)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cases: list[Case], results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        ddp.init_from_env("cpu")
        out = [train_steps(c) for c in cases]
        buf = io.BytesIO()
        torch.save(out, buf)  # bytes, not shared-memory tensors: the worker may exit before they are read
        results.put((rank, buf.getvalue(), None))
    except BaseException:  # noqa: BLE001 -- reported to the parent, which fails the test with it
        results.put((rank, None, traceback.format_exc()))
    finally:
        ddp.shutdown()


def run_ranks(cases: list[Case], world: int = 2, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
    """Every case in ``world`` forked gloo processes (one process group, cases in turn); rank 0's results, after
    checking every rank ended with the same parameters."""
    # fork: the ranks start with torch and the harness already imported (a spawned rank re-imports them: 40 s on
    # two busy cores, against 1 s for every case's steps). Safe here: CPU only, no process group in the parent.
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cases, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = _collect(procs, results, timeout)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    for rank in range(1, world):
        for a, b in zip(got[0], got[rank], strict=True):
            assert_close_dicts(a["params"], b["params"], f"rank {rank} vs rank 0 params")
    return got[0]


def _collect(procs: list, results: Any, timeout: float) -> dict[int, list]:
    """Each rank's results; fails at once when a rank dies without reporting, or after ``timeout`` seconds."""
    got: dict[int, list] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            rank, blob, error = results.get(timeout=1)
        except queue.Empty:
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in got]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"ranks {dead} died (exit {[procs[r].exitcode for r in dead]})" if dead else
                                     f"the {len(procs)} ranks did not finish within {timeout} s") from None
            continue
        if error:
            raise AssertionError(f"rank {rank} failed:\n{error}")
        got[rank] = torch.load(io.BytesIO(blob), weights_only=True)
    return got


def assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str,
                       rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys(), f"{what}: different tensors {sorted(a.keys() ^ b.keys())}"
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{what} {n}: {m}")


def assert_same(single: dict[str, Any], multi: dict[str, Any], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same loss at every step, same gradients at every step, same parameters after the last, to float32
    round-off (the ranks sum in a different order)."""
    torch.testing.assert_close(torch.tensor(multi["losses"]), torch.tensor(single["losses"]), rtol=rtol, atol=atol,
                               msg=lambda m: f"losses {multi['losses']} vs {single['losses']}: {m}")
    for step, (g1, gw) in enumerate(zip(single["grads"], multi["grads"], strict=True)):
        assert_close_dicts(g1, gw, f"step {step + 1} gradient", rtol, atol)
    assert_close_dicts(single["params"], multi["params"], "parameters", rtol, atol)


def _norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


def assert_within_roundoff(single: dict[str, Any], multi: dict[str, Any], ref: dict[str, Any], factor: float = 4.0,
                           floor: float = 1e-5) -> None:
    """``multi`` (W ranks, float32) is as close to ``single`` (1 process, float32) as float32 round-off allows:
    for every loss, every step's gradient and every parameter, ``|multi - single|`` (Frobenius) is at most
    ``factor`` times the 1-process run's own distance to the float64 run ``ref`` of the same case, plus ``floor``
    of the tensor's size (and of the whole gradient's, for tensors whose exact gradient is zero). A rank's missing
    cross-rank terms or a gradient off by a factor of W is off by far more."""
    def check(got, one, exact, what, scale):
        err, noise = _norm(got.double() - one.double()), _norm(one.double() - exact.double())
        bound = factor * noise + floor * (_norm(exact) + scale)
        assert err <= bound, f"{what}: 2 ranks differ from 1 process by {err:.3g}, float32 round-off allows {bound:.3g}"

    for step, (a, b, r) in enumerate(zip(multi["losses"], single["losses"], ref["losses"], strict=True)):
        check(torch.tensor(a), torch.tensor(b), torch.tensor(r), f"step {step + 1} loss {a} vs {b}", 0.0)
    for step, (gw, g1, gr) in enumerate(zip(multi["grads"], single["grads"], ref["grads"], strict=True)):
        assert gw.keys() == g1.keys(), f"step {step + 1}: gradients of different parameters"
        total = _norm(torch.cat([g.double().reshape(-1) for g in gr.values()]))
        for name in g1:
            check(gw[name], g1[name], gr[name], f"step {step + 1} gradient {name}", 1e-2 * total)
    for name in single["params"]:
        check(multi["params"][name], single["params"][name], ref["params"][name], f"parameter {name}", 0.0)
