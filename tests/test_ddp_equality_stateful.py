"""The methods that keep state across steps (queues, centers, EMA teachers) compute the same thing on 2 gloo ranks
with B/2 rows each as on one process with B rows: the same loss and gradients at every step, and the same
parameters AND buffers (queues, queue pointers, DINO's center, EMA teachers, BN statistics) after 3 steps.

MoCo v1/v2: shuffled BN over the global batch and a queue of gathered keys; SwAV: Sinkhorn over every rank's rows
(queue used from step 2) and a queue of gathered projections; DINO: the center from the global batch mean; BYOL and
SimSiam: synchronised BN and the gradient average only. One spawn of 2 processes runs every case.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ddp_harness import assert_within_roundoff, make_case, run_ranks, run_single

from methods import METHODS
from methods.moco import grouped_forward

# Options that make the state matter within 3 steps of 16 rows: SwAV's queue full after step 1 and used from step 2
# (its default fills from 7.5% of training and holds half the training set). MoCo's BN groups of 4 rows, 2 per rank,
# so every group's statistics cross the ranks (its default 8 groups of 2 rows: BN of two values amplifies round-off
# erratically, 2 ranks came 4.6x the float32-vs-float64 distance from 1 process while exact in float64).
ARGS = {
    "moco-v1": {"shuffle_bn_groups": 4},
    "moco-v2": {"shuffle_bn_groups": 4},
    "swav": {"queue_length": 16, "queue_start": 0.0},
    "dino": {},
    "byol": {},
    "simsiam": {},
}
# The state each method keeps, and that must have moved in the 3 steps (buffer or EMA-parameter name prefixes).
STATE = {
    "moco-v1": ("queue", "key_encoder."),
    "moco-v2": ("queue", "key_encoder."),
    "swav": ("queue",),
    "dino": ("center", "teacher."),
    "byol": ("target.",),
    "simsiam": ("projector.",),
}


FACTOR, FLOOR = 4.0, 1e-5  # as ddp_harness.assert_within_roundoff, which checks losses, gradients and parameters


def assert_buffers_within_roundoff(single: dict, multi: dict, ref: dict) -> None:
    """Queues, pointers, centers, BN statistics: counters equal, the rest as close to the 1-process float32 run as
    that run is to the float64 one (times FACTOR), like the parameters."""
    assert multi.keys() == single.keys(), f"buffers differ: {sorted(multi.keys() ^ single.keys())}"
    for name, one in single.items():
        got, exact = multi[name], ref[name]
        if not one.is_floating_point():
            assert torch.equal(got, one), f"buffer {name}: {got.tolist()} vs {one.tolist()}"
            continue
        err, noise = (got.double() - one.double()).norm().item(), (one.double() - exact.double()).norm().item()
        bound = FACTOR * noise + FLOOR * exact.double().norm().item()
        assert err <= bound, f"buffer {name}: 2 ranks differ from 1 process by {err:.3g}, float32 round-off allows {bound:.3g}"


@pytest.fixture(scope="module")
def runs():
    cases = [make_case(name, ARGS[name]) for name in ARGS]
    return dict(zip(ARGS, zip(cases, run_ranks(cases, world=2), strict=True), strict=True))


def test_cases_are_registered_stateful_methods():
    assert all(METHODS.get(name).trained_by == "sgd" for name in ARGS)


@pytest.mark.parametrize("name", list(ARGS))
def test_two_ranks_match_one_process_with_state(runs, name):
    case, multi = runs[name]
    single, ref = run_single(case), run_single(case, torch.float64)
    assert_within_roundoff(single, multi, ref, FACTOR, FLOOR)
    assert_buffers_within_roundoff(single["buffers"], multi["buffers"], ref["buffers"])
    start = run_single(replace(case, steps=0))
    state = {**single["buffers"], **single["params"]}
    initial = {**start["buffers"], **start["params"]}
    moved = [k for k in state if k.startswith(STATE[name]) and state[k].is_floating_point()
             and not torch.equal(state[k], initial[k])]
    assert moved, f"{name}: none of its state {STATE[name]} changed in {case.steps} steps"


def test_swav_queue_was_full_from_step_two(runs):
    _, multi = runs["swav"]
    assert int(multi["buffers"]["queue_count"]) == ARGS["swav"]["queue_length"]
    assert multi["buffers"]["queue"].abs().sum(-1).gt(0).all()


def test_moco_queue_holds_every_rank_keys(runs):
    case, multi = runs["moco-v2"]
    keys = case.steps * len(case.batch.index)
    assert int(multi["buffers"]["queue_ptr"]) == keys % len(multi["buffers"]["queue"])


@pytest.mark.parametrize("shuffle", [False, True])
def test_moco_bn_groups_are_rows_p_mod_groups_and_keep_the_row_order(shuffle):
    """One process: the BN groups of grouped_forward are the rows p % G (of the shuffled batch for keys), which is
    what lets every rank hold a share of each group; outputs come back in the input's row order."""
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    bn = torch.nn.BatchNorm1d(5, affine=False, track_running_stats=False)
    torch.manual_seed(1)
    out = grouped_forward(bn, x, 3, shuffle)
    torch.manual_seed(1)
    order = torch.randperm(12) if shuffle else torch.arange(12)
    for g in range(3):
        rows = order[g::3]
        torch.testing.assert_close(out[rows], bn(x[rows]))
    linear = torch.nn.Linear(5, 2)
    torch.testing.assert_close(grouped_forward(linear, x, 3, shuffle), linear(x))
