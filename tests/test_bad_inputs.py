"""The bad-input corpus: every command, each bad input one line on stderr, exit 2, no traceback, nothing written.

tests/test_cli.py holds the first 15 cases of `repbench run`; this file covers the rest: every other command,
corrupt checkpoints under --resume, malformed data, feature and baseline files, storage URLs, and output folders
that cannot be written (we run as root, so a chmod'ed folder would not stop us: the unwritable places are a path
under a regular file, /proc, and a disk that reports ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.cli import COMMANDS as _COMMANDS
from bench.cli import main
from bench.store import load_checkpoint, save_checkpoint

COMMANDS = set(_COMMANDS)
TINY = ["--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1",
        "--batch-size", "50", "--protocols", "", "--no-progress"]
RAW = ["run", "--method", "raw", "--dataset", "digits", "--protocols", "knn", "--no-progress"]


@dataclass
class Bad:
    name: str
    command: str
    make: Callable  # (inputs folder, ctx) -> argv; may create input files; ctx.patch is pytest's monkeypatch
    fragment: str  # what the one line must say
    files_only: bool = False  # a full disk still lets mkdir through: then only files must not appear
    needs_run: bool = False  # ctx.trained: a finished tiny run to damage or point at
    xfail: str = ""  # a known gap in a file this test's author does not own: the fix it needs


CASES: list[Bad] = []


def case(name: str, command: str, fragment: str, files_only: bool = False, needs_run: bool = False, xfail: str = ""):
    def wrap(fn):
        CASES.append(Bad(name, command, fn, fragment, files_only, needs_run, xfail))
        return fn
    return wrap


def simple(name: str, argv: list[str], fragment: str, xfail: str = "") -> None:
    CASES.append(Bad(name, argv[0], lambda d, ctx: list(argv), fragment, xfail=xfail))


def made(name: str, command: str, fragment: str, make: Callable) -> None:
    CASES.append(Bad(name, command, make, fragment))


# --------------------------------------------------------------------------- run: numbers, names, sizes

simple("run-negative-seed", ["run", "--method", "raw", "--dataset", "digits", "--seed", "-1"], "below the minimum 0")
simple("run-zero-per-class", ["run", "--method", "raw", "--dataset", "digits", "--per-class", "0"], "below the minimum 1")
simple("run-weight-decay-word", ["run", "--method", "raw", "--dataset", "digits", "--weight-decay", "lots"], "not a number")
simple("run-unknown-optimizer", ["run", "--method", "simclr", "--dataset", "digits", "--optimizer", "adam"],
       "invalid choice: 'adam'")
simple("run-unknown-recipe", ["run", "--method", "simclr", "--dataset", "digits", "--recipe", "papr"], "invalid choice")
simple("run-batch-of-one", ["run", "--method", "simclr", "--dataset", "digits", "--batch-size", "1"], "below the minimum 2")
simple("run-unknown-device", ["run", "--method", "raw", "--dataset", "digits", "--device", "tpu"], "unknown device 'tpu'")
simple("run-batch-larger-than-subset", ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "5",
                                        "--batch-size", "64"], "larger than the 50 training images")
simple("run-method-arg-wrong-type", ["run", "--method", "simclr", "--dataset", "digits", "--method-arg",
                                     "temperature=hot"], "temperature")


@case("run-out-in-proc", "run", "not a writable directory")
def _(d, ctx):
    return RAW + ["--out", "/proc/repbench-results"]


@case("run-full-disk", "run", "No space left on device", files_only=True)
def _(d, ctx):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    ctx.patch.setattr(os, "fsync", full)
    return RAW + ["--out", d / "out"]


# --------------------------------------------------------------------------- run: data files


@case("run-data-root-is-a-file", "run", "not found")
def _(d, ctx):
    (d / "fm").write_text("not a folder")
    return ["run", "--method", "raw", "--dataset", "fashion-mnist", "--data-root", d / "fm", "--out", d / "out"]


def _idx(path: Path, arr: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    path.write_bytes(struct.pack(">I", (code << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


@case("run-fmnist-wrong-size", "run", "expected 60000/10000")
def _(d, ctx):
    raw = d / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8))
        _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 10)
    return ["run", "--method", "raw", "--dataset", "fashion-mnist", "--data-root", d / "fm", "--out", d / "out"]


@case("run-fmnist-truncated-gzip", "run", "corrupt", files_only=True)  # an empty staging folder may stay
def _(d, ctx):
    root = d / "fm"
    root.mkdir()
    ctx.patch.setenv("REPBENCH_CACHE", str(d / "cache"))  # staging goes here; it must not be left behind half-written
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f"{name}.gz").write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000))[:100])
    return ["run", "--method", "raw", "--dataset", "fashion-mnist", "--data-root", root, "--out", d / "out"]


# --------------------------------------------------------------------------- run --resume: damaged checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run (two SGD steps) whose checkpoint the cases below damage."""
    out = tmp_path_factory.mktemp("trained")
    assert _quiet_main(["run", *TINY, "--out", str(out)]) == 0
    return out


def _quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _resume_case(name: str, fragment: str, damage: Callable[[Path, Path], None]) -> None:
    def make(d, ctx):
        out = d / "out"
        shutil.copytree(ctx.trained, out)
        ckpt = next(out.glob("runs/adhoc/*/checkpoint.pt"))
        damage(ckpt, d)
        return ["run", *TINY, "--out", out, "--resume"]
    CASES.append(Bad(name, "run", make, fragment, needs_run=True))


def _flip_middle(p: Path, d: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


def _wrong_model(p: Path, d: Path) -> None:
    state = load_checkpoint(p)
    state["model"] = {k + ".old": v for k, v in state["model"].items()}
    save_checkpoint(p, state)


_resume_case("resume-truncated-checkpoint", "corrupt or truncated",
             lambda p, d: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))
_resume_case("resume-bit-flipped-checkpoint", "corrupt", _flip_middle)
_resume_case("resume-empty-checkpoint", "corrupt or truncated", lambda p, d: p.write_bytes(b""))
_resume_case("resume-garbage-checkpoint", "corrupt or truncated", lambda p, d: p.write_bytes(os.urandom(4096)))
_resume_case("resume-foreign-checkpoint", "not a repbench checkpoint",
             lambda p, d: torch.save({"weights": torch.zeros(3)}, p))
_resume_case("resume-checkpoint-is-a-folder", "corrupt or truncated", lambda p, d: (p.unlink(), p.mkdir()))
_resume_case("resume-checkpoint-from-other-code", "does not fit this code's model", _wrong_model)


@case("resume-checkpoint-of-another-config", "run", "belongs to another configuration", needs_run=True)
def _(d, ctx):
    out = d / "out"
    shutil.copytree(ctx.trained, out)
    ckpt = next(out.glob("runs/adhoc/*/checkpoint.pt"))
    # A checkpoint of seed 0 sitting where the seed-1 run of the same command keeps its own.
    assert _quiet_main(["run", *TINY, "--seed", "1", "--out", str(d / "probe")]) == 0
    seed1 = next((d / "probe").glob("runs/adhoc/*")).name
    shutil.rmtree(d / "probe")
    (out / "runs" / "adhoc" / seed1).mkdir()
    shutil.copy(ckpt, out / "runs" / "adhoc" / seed1 / "checkpoint.pt")
    return ["run", *TINY, "--seed", "1", "--out", out, "--resume"]


# --------------------------------------------------------------------------- table


def _records(d: Path, text: str | bytes) -> Path:
    run = d / "runs" / "adhoc" / "x"
    run.mkdir(parents=True)
    (run / "record.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return d / "runs"


simple("table-no-runs-folder", ["table", "--runs", "/nonexistent/runs"], "no results directory")
made("table-empty-runs-folder", "table", "no record.json under", lambda d, ctx: ["table", "--runs", d])
made("table-truncated-record", "table", "cannot read",
     lambda d, ctx: ["table", "--runs", _records(d, '{"config": {"suite"')])
CASES.append(Bad("table-binary-record", "table", lambda d, ctx: ["table", "--runs", _records(d, b"\xff\xfe\x00garbage")],
                 "cannot read"))
CASES.append(Bad("table-json-but-not-a-record", "table", lambda d, ctx: ["table", "--runs", _records(d, '{"hello": 1}')],
                 "record"))
simple("table-metric-without-field", ["table", "--runs", "/nonexistent", "--metrics", "knn"], "not KEY.FIELD")
simple("compare-missing-folder", ["compare", "/nonexistent/a", "/nonexistent/b"], "no results directory /nonexistent/a")
made("report-empty-runs-folder", "report", "no record.json under", lambda d, ctx: ["report", "--runs", d, "--out", d / "site"])
made("config-folder-without-record", "config", "no record.json in", lambda d, ctx: ["config", "--run", d])
made("report-truncated-record", "report", "cannot read",
     lambda d, ctx: ["report", "--runs", _records(d, '{"config"'), "--out", d / "site"])


@case("table-out-under-a-file", "table", "cannot write", needs_run=True)
def _(d, ctx):
    (d / "file").write_text("x")
    return ["table", "--runs", ctx.trained, "--out", d / "file" / "tables"]


# --------------------------------------------------------------------------- list, data, throughput

simple("list-unknown-kind", ["list", "method"], "invalid choice: 'method'")
simple("list-no-kind", ["list"], "required: kind")
simple("data-unknown-dataset", ["data", "fetch", "digitz"], "Did you mean 'digits'")
simple("data-unknown-action", ["data", "download", "digits"], "invalid choice: 'download'")
simple("throughput-zero-steps", ["throughput", "--method", "simclr", "--dataset", "digits", "--steps", "0"],
       "below the minimum 1")
simple("throughput-untrained-method", ["throughput", "--method", "raw", "--dataset", "digits"], "does not train with SGD")
simple("throughput-batch-too-large", ["throughput", "--method", "simclr", "--dataset", "digits", "--batch-size", "5000"],
       "larger than the 1437 training images")
simple("throughput-unknown-method", ["throughput", "--method", "simclrr", "--dataset", "digits"], "Did you mean 'simclr'")

# --------------------------------------------------------------------------- check

simple("check-unknown-suite", ["check", "--suite", "cii"], "Did you mean 'ci'")
simple("check-missing-baseline", ["check", "--baseline", "/nonexistent/ci.json"], "no baseline at")
# decode / generate: the rest of their cases are in tests/test_generation.py
simple("decode-missing-run", ["decode", "--run", "/nonexistent/run"], "run directory /nonexistent/run does not exist")
simple("generate-n-0", ["generate", "--run", "/nonexistent/run", "--text", "a shoe", "--n", "0", "--out", "/nonexistent/g.png"],
       "below the minimum 1")


def _baseline(d: Path, text: str) -> list:
    (d / "b.json").write_text(text)
    return ["check", "--baseline", d / "b.json"]


made("check-baseline-not-json", "check", "cannot read", lambda d, ctx: _baseline(d, "{oops"))
made("check-baseline-wrong-format", "check", "not a repbench check baseline", lambda d, ctx: _baseline(d, '{"runs": []}'))
made("check-baseline-of-other-suite", "check", "baseline of suite 'smoke'",
     lambda d, ctx: _baseline(d, '{"format": 1, "suite": "smoke", "runs": {}}'))


@case("check-update-baseline-under-a-file", "check", "not a directory")
def _(d, ctx):
    (d / "file").write_text("x")
    return ["check", "--update", "--baseline", d / "file" / "ci.json"]


@case("check-out-in-proc", "check", "not a writable directory")
def _(d, ctx):
    return ["check", "--update", "--baseline", d / "ci.json", "--out", "/proc/repbench-check"]


# --------------------------------------------------------------------------- eval (more in test_released_checkpoints.py)

simple("eval-missing-checkpoint", ["eval", "--checkpoint", "no-such.pth", "--format", "dino", "--dataset", "digits"],
       "no such file")


# --------------------------------------------------------------------------- reproduce (more in test_reproduce.py)

simple("reproduce-unknown-table", ["reproduce", "--table", "no-such-table"], "unknown table")
simple("reproduce-zero-scale", ["reproduce", "--table", "lightly-cifar10-e200-b128", "--scale", "0"], "--scale")


# --------------------------------------------------------------------------- eval-features


def _npz(path: Path, **arrays) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def _feats(d: Path, train: dict | None = None, test: dict | None = None) -> list:
    rng = np.random.default_rng(0)
    good = {"x": rng.normal(size=(30, 4)).astype(np.float32), "y": np.arange(30) % 3}
    a = _npz(d / "a.npz", **(train if train is not None else good))
    b = _npz(d / "b.npz", **(test if test is not None else good))
    return ["eval-features", "--train", a, "--test", b, "--protocols", "knn", "--out", d / "m.json"]


def _text_file(d: Path) -> list:
    (d / "a.npz").write_text("x,y\n1,2\n")
    return ["eval-features", "--train", d / "a.npz", "--test", d / "a.npz", "--out", d / "m.json"]


made("eval-features-not-an-npz", "eval-features", "not an .npz archive", lambda d, ctx: _text_file(d))
made("eval-features-missing-y", "eval-features", "no array 'y'", lambda d, ctx: _feats(d, train={"x": np.zeros((30, 4))}))
made("eval-features-dimension-mismatch", "eval-features", "dimensions differ",
     lambda d, ctx: _feats(d, test={"x": np.zeros((30, 5), np.float32), "y": np.arange(30) % 3}))
made("eval-features-nan", "eval-features", "NaN or inf",
     lambda d, ctx: _feats(d, test={"x": np.full((30, 4), np.nan, np.float32), "y": np.arange(30) % 3}))
made("eval-features-unknown-protocol", "eval-features", "Did you mean 'knn'",
     lambda d, ctx: _feats(d)[:-4] + ["--protocols", "knnn"])


@case("eval-features-out-under-a-file", "eval-features", "cannot write")
def _(d, ctx):
    (d / "file").write_text("x")
    return _feats(d)[:-1] + [d / "file" / "m.json"]


# --------------------------------------------------------------------------- search, ablate, plot

simple("search-storage-not-a-url", ["search", "--method", "simclr", "--suite", "smoke", "--storage", "optuna.db"],
       "neither a SQLAlchemy URL")
simple("search-storage-unknown-driver", ["search", "--method", "simclr", "--suite", "smoke", "--storage",
                                         "nosuchdb://user@host/db"], "not a usable SQLAlchemy URL")
simple("search-zero-trials", ["search", "--method", "simclr", "--trials", "0"], "below the minimum 1")
simple("search-two-seeds", ["search", "--method", "simclr", "--seeds", "2"], "at least 3 seeds")


@case("search-storage-unreachable", "search", "cannot connect")
def _(d, ctx):
    # Port 1 on the loopback refuses at once; the server is checked before anything is written.
    return ["search", "--method", "simclr", "--suite", "smoke", "--trials", "1", "--seeds", "0",
            "--storage", "postgresql://user@127.0.0.1:1/db", "--out", d / "out"]


@case("search-journal-in-missing-folder", "search", "does not exist")
def _(d, ctx):
    return ["search", "--method", "simclr", "--suite", "smoke", "--storage", str(d / "nope" / "j.log"),
            "--out", d / "out"]


simple("ablate-unknown-grid", ["ablate", "--grid", "recipee", "--out", "/nonexistent-ablate"], "Did you mean 'recipe'")
simple("ablate-two-seeds", ["ablate", "--grid", "smoke", "--seeds", "2"], "at least 3 seeds")
simple("plot-unknown-kind", ["plot", "recon", "--run", "x", "--out", "x.png"], "invalid choice")


@case("plot-missing-run", "plot", "does not exist")
def _(d, ctx):
    return ["plot", "reconstructions", "--run", d / "nope", "--out", d / "r.png"]


@case("plot-method-without-decoder", "plot", "decoder", needs_run=True)
def _(d, ctx):
    run = next(Path(ctx.trained).glob("runs/adhoc/*"))
    return ["plot", "reconstructions", "--run", run, "--out", d / "r.png"]


# --------------------------------------------------------------------------- the test


def _snapshot(root: Path, files_only: bool) -> dict[str, str]:
    snap = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            snap[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif not files_only:
            snap[str(p.relative_to(root))] = "dir"
    return snap


@pytest.mark.parametrize("bad", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                              if c.xfail else []) for c in CASES])
def test_bad_input(bad, cli, tmp_path, monkeypatch, request):
    if bad.command not in COMMANDS:
        pytest.skip(f"'repbench {bad.command}' is not registered in bench/commands yet")
    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)  # default output folders would land here
    ctx = SimpleNamespace(patch=monkeypatch, trained=request.getfixturevalue("trained") if bad.needs_run else None)
    argv = bad.make(inputs, ctx)
    before = _snapshot(tmp_path, bad.files_only)
    code, out, err = cli(*argv)
    assert "Traceback" not in err
    assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
    assert bad.fragment in err, err
    assert code == 2
    assert out == ""
    assert _snapshot(tmp_path, bad.files_only) == before, "something was written"


def test_corpus_is_large_and_spans_every_command():
    assert len([c for c in CASES if not c.xfail]) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    missing = COMMANDS - {c.command for c in CASES}
    assert not missing, f"commands without a bad-input case: {sorted(missing)}"
