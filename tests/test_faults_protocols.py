"""Fault injection, protocols (issue #16, "Small but valid data" and "Memory").

Every registered protocol on every small-but-valid or hostile shape of data gives result entries, entries marked
skipped with a one-line reason, or one UsageError: never another exception, and never an allocation beyond the
memory budget. The CLI cases: exit 2, one line, nothing written; or, where the data can still answer part of the
request, the documented skipped entries. The rule the cases hold the code to is in protocols/base.py's docstring.

Every case runs under an address-space cap (``memory_cap``), so a case that would build a 2**40-element set or a
D x D matrix fails at once with MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.errors import UsageError
from protocols import PROTOCOLS
from protocols.base import Features

FEWSHOT_KEYS = {"fewshot_1pct", "fewshot_10pct", "fewshot_1shot", "fewshot_5shot", "fewshot_10shot"}
BUDGET_ENV = "REPBENCH_MEMORY_BUDGET"
HEADROOM = 2 << 30  # what a case may allocate beyond what the process has mapped when it starts
# Fields that are fractions 0..1 wherever an entry has them (NaN where undefined, e.g. top-5 below 5 classes).
FRACTIONS = ("top1", "top5", "mean_per_class_recall", "nmi", "acc", "top1_std")


@pytest.fixture(autouse=True)
def memory_cap():
    """Cap this process's address space for the case, then restore it."""
    size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + HEADROOM if hard == resource.RLIM_INFINITY else min(hard, size + HEADROOM)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def blobs(counts=None, d: int = 4, seed: int = 0, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around one centre per class: ``counts[c]`` samples of class c, or the given ``labels``."""
    if labels is None:
        labels = [c for c, n in enumerate(counts) for _ in range(n)]
    y = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    centre = (y.double() % 7).float()[:, None] * 2 if len(y) else torch.zeros(0, 1)
    return torch.randn(len(y), d, generator=g) + centre, y


def pair(train_counts, test_counts, d: int = 4) -> tuple[Features, Features]:
    (tx, ty), (sx, sy) = blobs(train_counts, d), blobs(test_counts, d, seed=1)
    return Features(tx, ty), Features(sx, sy)


def with_labels(train_labels, test_labels, **test_kw) -> tuple[Features, Features]:
    (tx, ty), (sx, sy) = blobs(labels=train_labels), blobs(labels=test_labels, seed=1)
    return Features(tx, ty), Features(sx, sy, **test_kw)


def fewshot_skips(smallest_class: int) -> set[str]:
    """Few-shot settings the smallest training class cannot serve: its k labelled images (no more: lambda is chosen
    inside them)."""
    needs = {"fewshot_1pct": 1, "fewshot_10pct": 1, "fewshot_1shot": 1, "fewshot_5shot": 5, "fewshot_10shot": 10}
    return {key for key, n in needs.items() if smallest_class < n}


@dataclass(frozen=True)
class Data:
    name: str
    make: Callable[[], tuple[Features, Features]]
    skips: dict[str, set[str]] = field(default_factory=dict)  # protocol -> keys that must come back skipped
    refuse: str = ""  # bad input: what the UsageError must say


def _float_labels():
    train, test = pair([6, 6], [3, 3])
    return Features(train.x, train.y.float()), test


def _bool_labels():
    train, test = pair([6, 6], [3, 3])
    return Features(train.x, train.y.bool()), Features(test.x, test.y.bool())


def _labels_2d():
    train, test = pair([6, 6], [3, 3])
    return Features(train.x, train.y[:, None]), test


def _rows_mismatch():
    train, test = pair([6, 6], [3, 3])
    return Features(train.x[:-1], train.y), test


def _dims_differ():
    train, _ = pair([6, 6], [3, 3])
    test, _ = pair([3, 3], [1], d=5)
    return train, Features(test.x, test.y)


def _constant_features():
    train, test = pair([12, 12, 12], [3, 3, 3])
    return Features(torch.zeros_like(train.x), train.y), Features(torch.zeros_like(test.x), test.y)


DATA = [
    Data("n1", lambda: pair([1], [3]), {"linear": {"linear"}, "fewshot": FEWSHOT_KEYS}),
    Data("n2", lambda: pair([1, 1], [2, 2]), {"fewshot": fewshot_skips(1)}),
    Data("one-class", lambda: pair([20], [5]), {"fewshot": {"fewshot_1pct", "fewshot_1shot"}}),  # 1 labelled image
    *[Data(f"{k}-per-class", lambda k=k: pair([k] * 3, [4] * 3), {"fewshot": fewshot_skips(k)}) for k in range(1, 6)],
    Data("d1", lambda: pair([10] * 3, [4] * 3, d=1), {"fewshot": fewshot_skips(10)}),
    Data("labels-not-contiguous", lambda: with_labels([0] * 5 + [2] * 5, [0, 2, 2]), {"fewshot": fewshot_skips(5)}),
    Data("class-only-in-test", lambda: with_labels([0] * 5 + [1] * 5, [0, 1, 2]), {"fewshot": fewshot_skips(5)}),
    Data("fewer-train-samples-than-classes", lambda: with_labels([0, 1], [0, 1, 2, 2]), {"fewshot": fewshot_skips(1)}),
    Data("constant-features", _constant_features),
    Data("train-label-2**40", lambda: with_labels([0, 1] * 4 + [2**40], [0, 1]), refuse=str(2**40)),
    Data("test-label-2**40", lambda: with_labels([0, 1] * 4, [0, 2**40]), refuse=str(2**40)),
    Data("train-label-negative", lambda: with_labels([0, 1] * 4 + [-1], [0, 1]), refuse="-1"),
    Data("test-label-negative", lambda: with_labels([0, 1] * 4, [0, -3]), refuse="-3"),
    Data("labels-at-class-limit", lambda: with_labels([0, 1] * 4 + [100_000], [0, 1]), refuse="100000"),
    Data("num-classes-2**40", lambda: with_labels([0, 1] * 4, [0, 1], num_classes=2**40), refuse=str(2**40)),
    Data("labels-beyond-sample-count", lambda: with_labels([0, 1] * 4 + [500], [0, 1]), refuse="501"),
    Data("labels-float", _float_labels, refuse="integers"),
    Data("labels-bool", _bool_labels, refuse="integers"),
    Data("labels-2d", _labels_2d, refuse="1-D"),
    Data("rows-mismatch", _rows_mismatch, refuse="one label per row"),
    Data("dims-differ", _dims_differ, refuse="dimensions differ"),
]


def _is_skip(entry: dict) -> bool:
    return "skipped" in entry


def _assert_one_line(text: str) -> None:
    assert isinstance(text, str) and text.strip() and "\n" not in text, repr(text)


@pytest.mark.parametrize("data", DATA, ids=lambda d: d.name)
@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_on_small_or_hostile_data(name, data):
    train, test = data.make()
    if data.refuse:
        with pytest.raises(UsageError) as err:
            PROTOCOLS.get(name)(train, test)
        _assert_one_line(str(err.value))
        assert data.refuse in str(err.value)
        return
    out = PROTOCOLS.get(name)(train, test)
    assert {k for k, e in out.items() if _is_skip(e)} == data.skips.get(name, set())
    for key, entry in out.items():
        if _is_skip(entry):
            assert set(entry) == {"skipped"}, key  # the one shape of a skipped entry
            _assert_one_line(entry["skipped"])
            continue
        for f in FRACTIONS:
            if f in entry:
                assert math.isnan(entry[f]) or 0.0 <= entry[f] <= 1.0, (key, f, entry[f])


def test_fewshot_reason_says_what_is_needed_and_what_the_data_has():
    out = PROTOCOLS.get("fewshot")(*pair([9, 3, 9], [2, 2, 2]))
    reason = out["fewshot_5shot"]["skipped"]
    assert "needs 5" in reason and "class 1 has 3" in reason, reason
    assert "top1" in out["fewshot_1shot"]


# --------------------------------------------------------------------------- memory


def huge(n: int, d: int, labels) -> Features:
    """(n, d) features that occupy one float: a stride-0 view, so only a protocol that copies them allocates."""
    return Features(torch.ones(1, 1).expand(n, d), torch.as_tensor(labels))


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_huge_dimension_is_skipped_before_allocating(name, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "64M")
    train, test = huge(36, 2_000_000, [0, 1, 2] * 12), huge(6, 2_000_000, [0, 1, 2] * 2)
    out = PROTOCOLS.get(name)(train, test)
    if name == "zero-shot":  # no text side: no entry at all (its documented output)
        assert out == {}
        return
    assert out and all(_is_skip(e) for e in out.values()), out
    for entry in out.values():
        _assert_one_line(entry["skipped"])
        assert "D=2000000" in entry["skipped"] and "budget" in entry["skipped"] and BUDGET_ENV in entry["skipped"]


def _shape(counts, n_test: int, dim: int | None):
    from protocols.limits import Shape  # the API under test; imported here so the other cases run without it
    return Shape(np.asarray(counts), n_test, dim)


def _limits(name: str):
    from protocols import LIMITS
    return LIMITS.get(name)


def test_every_protocol_declares_its_limits():
    from protocols import LIMITS
    assert LIMITS.names() == PROTOCOLS.names()


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_memory_formula_at_a_huge_dimension_without_features(name, monkeypatch):
    """The formula is checked on the shape alone: D = 10**8 would need 400 MB per row of features."""
    monkeypatch.setenv(BUDGET_ENV, "1G")
    small = _limits(name)(_shape([12, 12, 12], 6, 8))
    assert not any(small.values()), small
    big = _limits(name)(_shape([12, 12, 12], 6, 10**8))
    if name == "zero-shot":  # its entries depend on the text side, unknown from a shape
        assert big == {}
        return
    assert big and all(big.values()), big
    for key, reason in big.items():
        _assert_one_line(reason)
        assert "D=100000000" in reason and "1.0 GiB" in reason, (key, reason)


def test_default_linear_budget_refuses_a_d_by_d_preconditioner():
    reason = _limits("linear")(_shape([4, 4], 4, 1_000_000))["linear"]
    assert "(D+1)^2" in reason and "D=1000000" in reason, reason


def _needed_bytes(reason: str) -> int:
    return int(re.search(r"needs ([\d,]+) bytes", reason).group(1).replace(",", ""))


def _peak_above_now(run: Callable[[], object]) -> int:
    """Peak resident memory while ``run`` runs, above what is resident when it starts (Linux VmHWM reset). Memory
    freed earlier is handed back to the OS first (glibc's malloc_trim): reused, it would hide what ``run`` needs."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    status = lambda key: int(Path("/proc/self/status").read_text().split(f"{key}:")[1].split()[0]) * 1024
    start = status("VmRSS")
    run()
    return status("VmHWM") - start


@pytest.mark.parametrize("name,n,m,d,c", [("linear", 300, 100, 700, 5), ("fewshot", 300, 100, 700, 5),
                                          ("knn", 3000, 400, 256, 10), ("kmeans", 1500, 300, 256, 10)])
def test_formula_bounds_the_measured_peak(name, n, m, d, c, monkeypatch):
    (tx, ty), (sx, sy) = blobs([n // c] * c, d), blobs([m // c] * c, d, seed=1)
    train, test = Features(tx, ty), Features(sx, sy)
    monkeypatch.setenv(BUDGET_ENV, "1")  # every entry over budget: its reason states the bytes it needs
    need = max(_needed_bytes(r) for r in _limits(name)(_shape(np.bincount(ty.numpy()), m, d)).values())
    monkeypatch.delenv(BUDGET_ENV)
    protocol = PROTOCOLS.get(name)
    # A first call of the same size: lazy imports, one-time buffers and the thread pool its size asks for (threads'
    # stacks and malloc arenas) are not the formula's.
    protocol(train, test)
    peak = _peak_above_now(lambda: protocol(train, test))
    assert peak <= need, f"{name}: measured {peak:,} bytes, formula {need:,}"


@pytest.mark.parametrize("text,expected", [("1G", 1 << 30), ("512M", 512 << 20), ("1000", 1000), ("1.5G", 3 << 29),
                                           ("64k", 64 << 10), ("2GiB", 2 << 30)])
def test_budget_setting(text, expected, monkeypatch):
    from protocols.limits import memory_budget
    monkeypatch.setenv(BUDGET_ENV, text)
    assert memory_budget("cpu")[0] == expected


@pytest.mark.parametrize("text", ["lots", "-1", "0", "1X", "G", "1e400"])
def test_bad_budget_setting_is_one_line(text, monkeypatch):
    from protocols.limits import memory_budget
    monkeypatch.setenv(BUDGET_ENV, text)
    with pytest.raises(UsageError) as err:
        memory_budget("cpu")
    _assert_one_line(str(err.value))
    assert BUDGET_ENV in str(err.value)


def test_default_budget_is_a_fraction_of_this_machine(monkeypatch):
    from protocols.limits import memory_budget
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    budget, source = memory_budget("cpu")
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < budget <= total and source


# --------------------------------------------------------------------------- repbench eval-features


@dataclass(frozen=True)
class Cli:
    name: str
    train: tuple  # (x, y) arrays of the train file, or a callable returning them
    test: tuple
    args: tuple = ()
    env: tuple = ()  # (name, value) pairs
    fragment: str = ""  # refused: what the one line must say
    skipped: frozenset = frozenset()  # accepted: the keys that must come back skipped


def arrays(counts, d: int = 4, seed: int = 0, labels=None, label_dtype=np.int64):
    x, y = blobs(counts, d, seed, labels)
    return x.numpy(), y.numpy().astype(label_dtype)


def _with_label(counts, label, dtype=np.int64):
    x, y = arrays(counts)
    y = y.astype(dtype)
    y[-1] = label
    return x, y


TRAIN, TEST = arrays([8, 8, 8]), arrays([3, 3, 3], seed=1)
CLI_CASES = [
    Cli("train-label-2**40", _with_label([8, 8, 8], 2**40), TEST, fragment="1099511627776"),
    Cli("test-label-2**40", TRAIN, _with_label([3, 3, 3], 2**40), fragment="1099511627776"),
    Cli("train-label-negative", _with_label([8, 8, 8], -5), TEST, fragment="-5"),
    Cli("labels-uint64-max", _with_label([8, 8, 8], 2**64 - 1, np.uint64), TEST, fragment="18446744073709551615"),
    Cli("labels-at-class-limit", _with_label([8, 8, 8], 100_000), TEST, fragment="100000"),
    Cli("labels-beyond-sample-count", _with_label([8, 8, 8], 500), TEST, fragment="501"),
    Cli("labels-float-integral", arrays([8, 8, 8], label_dtype=np.float64), TEST, fragment="integers"),
    Cli("labels-bool", arrays([8, 8], label_dtype=bool), arrays([3, 3], seed=1, label_dtype=bool), fragment="integers"),
    Cli("labels-2d", (TRAIN[0], TRAIN[1][:, None]), TEST, fragment="1-D"),
    Cli("linear-d-200000", arrays([2, 2], d=200_000), arrays([2, 2], d=200_000, seed=1), ("--protocols", "linear"),
        fragment="(D+1)^2"),
    Cli("knn-over-budget", arrays([20, 20], d=2000), arrays([10, 10], d=2000, seed=1), ("--protocols", "knn"),
        (("REPBENCH_MEMORY_BUDGET", "100K"),), fragment="knn"),
    Cli("kmeans-over-budget", arrays([20, 20], d=2000), arrays([10, 10], d=2000, seed=1), ("--protocols", "kmeans"),
        (("REPBENCH_MEMORY_BUDGET", "100K"),), fragment="kmeans"),
    Cli("budget-not-a-size", TRAIN, TEST, ("--protocols", "knn"), (("REPBENCH_MEMORY_BUDGET", "lots"),),
        fragment="REPBENCH_MEMORY_BUDGET"),
    Cli("budget-zero", TRAIN, TEST, ("--protocols", "knn"), (("REPBENCH_MEMORY_BUDGET", "0"),),
        fragment="REPBENCH_MEMORY_BUDGET"),
    Cli("fewshot-one-image", arrays([1]), arrays([3], seed=1), ("--protocols", "fewshot"), fragment="fewshot"),
    Cli("fewshot-one-per-class", arrays([1, 1, 1]), TEST, ("--protocols", "fewshot"),
        skipped=frozenset({"fewshot_5shot", "fewshot_10shot"})),
    Cli("linear-one-sample", arrays([1]), arrays([3], seed=1), ("--protocols", "linear"), fragment="linear"),
    Cli("one-sample-default-protocols", arrays([1]), arrays([3], seed=1), fragment="needs"),
    Cli("fewshot-five-per-class", arrays([5, 5, 5]), TEST, ("--protocols", "fewshot"),
        skipped=frozenset({"fewshot_10shot"})),
    Cli("knn-k-above-train-size", arrays([4, 4, 4]), TEST, ("--protocols", "knn")),
    Cli("linear-two-samples", arrays([1, 1]), arrays([2, 2], seed=1), ("--protocols", "linear")),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.name)
def test_eval_features(case, cli, tmp_path, monkeypatch):
    files = []
    for split, made in (("train", case.train), ("test", case.test)):
        x, y = made
        files.append(tmp_path / f"{split}.npz")
        np.savez(files[-1], x=x, y=y)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    out = tmp_path / "m.json"
    code, stdout, err = cli("eval-features", "--train", files[0], "--test", files[1], "--out", out, *case.args)
    assert "Traceback" not in err
    if case.fragment:
        assert code == 2 and stdout == "", err
        assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
        assert case.fragment in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz"], "something was written"
        return
    assert code == 0, err
    metrics = json.loads(out.read_text())
    assert {k for k, e in metrics.items() if _is_skip(e)} == set(case.skipped)
    lines = err.splitlines()
    assert len(lines) == len(case.skipped) and all(line.startswith("repbench: skipped ") for line in lines), err
    for key in case.skipped:
        assert sum(key in line for line in lines) == 1, err  # said once


def test_refusals_name_the_file(cli, tmp_path):
    train, test = tmp_path / "feats-a.npz", tmp_path / "feats-b.npz"
    np.savez(train, x=TRAIN[0], y=TRAIN[1])
    np.savez(test, x=TEST[0], y=_with_label([3, 3, 3], 2**40)[1])
    code, _, err = cli("eval-features", "--train", train, "--test", test, "--protocols", "knn")
    assert code == 2 and "feats-b.npz" in err and "feats-a.npz" not in err, err


# --------------------------------------------------------------------------- repbench run

TINY = ["--dataset", "digits", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50", "--no-progress"]


@pytest.mark.parametrize("per_class,skips", [("5", {"fewshot_10shot"}), ("1", {"fewshot_5shot", "fewshot_10shot"})])
def test_run_with_too_few_images_for_some_shots_finishes_with_them_skipped(cli, tmp_path, per_class, skips):
    code, _, err = cli("run", "--method", "simclr", *TINY, "--batch-size", "10", "--per-class", per_class,
                       "--protocols", "fewshot", "--out", tmp_path)
    assert code == 0, err
    (record,) = tmp_path.rglob("record.json")
    metrics = json.loads(record.read_text())["metrics"]
    assert {k for k, e in metrics.items() if _is_skip(e)} == skips
    assert "top1" in metrics["fewshot_1shot"]
    assert sum("repbench: skipped fewshot_10shot" in line for line in err.splitlines()) == 1, err


def test_run_whose_named_protocol_cannot_run_is_refused_before_training(tmp_path):
    # 1 image per class and few-shot asked (by its settings) for 5 shots only: nothing is computed or written.
    from bench.config import RunConfig
    from bench.core.errors import UsageError
    from bench.runner import run_one

    cfg = RunConfig(method="raw", dataset="digits", per_class=1, batch_size=10, protocols=("knn", "fewshot"),
                    protocol_args={"fewshot": {"fractions": [], "shots": [5]}})
    with pytest.raises(UsageError, match="fewshot.*--protocols"):
        run_one(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- readers of metrics


def _record(metrics: dict, seed: int = 0) -> dict:
    return {"run_id": f"r{seed}", "status": "ok", "config": {"suite": "s", "dataset": "digits", "backbone": "convnet",
                                                             "method": "raw", "seed": seed, "method_args": {}},
            "data": {"train": 30}, "metrics": metrics}


SKIPPED_METRICS = {"fewshot_5shot": {"skipped": "needs 6 training images per class; class 0 has 5"},
                   "fewshot_1shot": {"shots": 1, "top1": 0.5}, "knn": {"skipped": "over the memory budget"}}


def test_report_tables_ignore_skipped_entries():
    from bench.report import aggregate, flatten, markdown
    df = flatten([_record(SKIPPED_METRICS, s) for s in (0, 1)])
    assert "fewshot_1shot.top1" in df.columns
    assert not any(c.startswith(("fewshot_5shot", "knn")) for c in df.columns)
    assert "50.0" in markdown(aggregate(df))


def test_check_ignores_skipped_entries_and_reports_them_vanished():
    from bench.experiments.check import compare, flat_metrics
    now = flat_metrics(_record(SKIPPED_METRICS))
    assert "fewshot_1shot.top1" in now and not any(k.startswith(("fewshot_5shot", "knn")) for k in now)
    base = {**now, "knn.top1": 0.9}
    regressions, _ = compare({"r": base}, {"r": now})
    assert [r.metric for r in regressions] == ["knn.top1"]
