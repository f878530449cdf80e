"""2 gloo ranks with B/2 rows each compute what 1 process computes with B rows on the same views: the same loss and
gradients at each of 3 steps and the same parameters after them, to float32 round-off (measured per tensor against
a float64 run of the same case: tests/ddp_harness.py). BatchNorm is synchronised, fp32, no autocast.

Cross-rank terms: SimCLR, CLIP, MoCo v3 (in-batch keys), Barlow Twins and VICReg gather their embeddings with
gradients; InstDisc's memory bank takes every rank's rows and NCE's Z comes from the global batch. Supervised, the
autoencoder (with and without drawn noise) and MAE (the global batch's masks, sliced) need only the gradient
average. The stateful methods are in tests/test_ddp_equality_stateful.py; together they cover every registered
method trained by SGD (checked below).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ddp_harness import assert_within_roundoff, make_case, run_ranks, run_single

from methods import METHODS

CASES = {
    "simclr": ("simclr", {}),
    "clip": ("clip", {}),
    "moco-v3": ("moco-v3", {}),
    "instdisc": ("instdisc", {}),
    "instdisc-nce": ("instdisc", {"loss": "nce", "noise_samples": 64}),
    "barlowtwins": ("barlowtwins", {}),
    "vicreg": ("vicreg", {}),
    "supervised": ("supervised", {}),
    "autoencoder": ("autoencoder", {}),
    "autoencoder-gaussian": ("autoencoder", {"noise": "gaussian"}),
    "autoencoder-mask": ("autoencoder", {"noise": "mask"}),
    "mae": ("mae", {}),
}
STATEFUL = ("moco-v1", "moco-v2", "swav", "dino", "byol", "simsiam")  # tests/test_ddp_equality_stateful.py


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on 2 shared, busy cores: 2 OpenMP threads spin-wait (Barlow Twins' 3 steps: 7.7 s with 2
    threads, 0.6 s with 1, measured here). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    cases = {label: make_case(name, args) for label, (name, args) in CASES.items()}
    return dict(zip(cases, zip(cases.values(), run_ranks(list(cases.values()), world=2), strict=True), strict=True))


def test_every_sgd_method_has_an_equality_case():
    trained = {n for n in METHODS if METHODS.get(n).trained_by == "sgd"}
    covered = {name for name, _ in CASES.values()} | set(STATEFUL)
    assert trained == covered, f"missing {sorted(trained - covered)}, unknown {sorted(covered - trained)}"


@pytest.mark.parametrize("label", list(CASES))
def test_two_ranks_match_one_process(runs, label):
    case, multi = runs[label]
    single, ref = run_single(case), run_single(case, torch.float64)
    assert_within_roundoff(single, multi, ref)
    assert any(not torch.equal(p, q) for p, q in zip(single["params"].values(), run_single(
        replace(case, steps=0))["params"].values(), strict=True)), "3 steps changed nothing"


def test_two_ranks_see_half_the_rows_each(runs):
    """The gathers are what make SimCLR exact: its per-rank loss alone (B/2 rows of negatives) is another number."""
    case, multi = runs["simclr"]
    n = len(case.batch.index) // 2
    b = case.batch
    half = replace(case, batch=replace(b, views=[v[:n] for v in b.views], images=b.images[:n], labels=b.labels[:n],
                                       index=b.index[:n]))
    assert abs(run_single(half)["losses"][0] - multi["losses"][0]) > 0.05
