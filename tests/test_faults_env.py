"""Fault injection, environment and tables: each case one hostile environment, cache state or record file.

- Environment: HOME, REPBENCH_CACHE and REPBENCH_DATA empty (an empty value means unset), pointing under a
  regular file, at a regular file, into /proc or relative, for `repbench run --dataset fashion-mnist` and
  `repbench data fetch`. A bad place is one line on stderr naming the variable, exit 2, nothing written.
- Cache: Fashion-MNIST staged from the published idx.gz files into the cache is renamed into place whole; a
  process SIGKILLed at random points while it stages leaves nothing the next run trips over, and the next run
  removes the dead process's temp folder (never a live process's, another host's or a folder not ours).
- Tables: a record.json that is JSON but not a record's shape stops `repbench table` with one line naming the
  file; rows from several suites get a suite column.

The Fashion-MNIST used here is a fake of full size (60000/10000 images) written by the test in the published
idx.gz format; nothing downloads (torchvision's downloader is replaced by one that fails the test).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import bench.data.fashion_mnist as fm
from bench.cli import main
from bench.data.cache import HOST, prepare_matplotlib
from bench.store import REPO_ROOT

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PROC = "/proc/repbench-faults"
TINY = ["--per-class", "10", "--test-per-class", "5", "--batch-size", "50", "--protocols", "knn", "--no-progress"]
ENV_VARS = ("HOME", "REPBENCH_CACHE", "REPBENCH_DATA", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


# --------------------------------------------------------------------------- a fake Fashion-MNIST


def _idx_gz(path: Path, arr: np.ndarray) -> None:
    """The published format: big-endian magic (0x08 = unsigned byte, then ndim), the dims, the bytes; gzipped."""
    header = struct.pack(">I", (0x08 << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes(), compresslevel=1))


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(n) % 10).astype(np.uint8)
    x = np.zeros((n, 28, 28), np.uint8)
    for c in range(10):  # one bright stripe per class, so k-NN has something to find
        x[y == c, 2 * c + 4, :] = 200
    return x, y


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake-fmnist")
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        x, y = _split(n)
        _idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture(scope="module")
def plain(fake, tmp_path_factory) -> Path:
    """The same files unpacked where torchvision reads them in place (<root>/FashionMNIST/raw)."""
    root = tmp_path_factory.mktemp("plain-fmnist")
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for f in FILES:
        (root / "FashionMNIST" / "raw" / f).write_bytes(gzip.decompress((fake / f"{f}.gz").read_bytes()))
    return root


@pytest.fixture(scope="module")
def unpacked(fake) -> dict[str, str]:
    """sha256 of each file as it must look once unpacked into the cache."""
    return {f: hashlib.sha256(gzip.decompress((fake / f"{f}.gz").read_bytes())).hexdigest() for f in FILES}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean environment: HOME a fresh folder, no REPBENCH_* set, no Debian package, no apt, no network."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (tmp_path / "file.txt").write_text("a regular file")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(fm.shutil, "which", lambda name, *a, **k: None)

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download")
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_download)
    monkeypatch.setattr("torchvision.datasets.mnist.download_url", no_download, raising=False)
    return SimpleNamespace(d=tmp_path, home=home, work=work, file=tmp_path / "file.txt", patch=monkeypatch)


def _run_fm(ctx, data_root: Path | None) -> list:
    root = ["--data-root", data_root] if data_root else []
    return ["run", "--method", "raw", "--dataset", "fashion-mnist", *root, *TINY, "--out", ctx.d / "out"]


def _staged(cache: Path) -> list[str]:
    """Every file under the cache, relative to it."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def _assert_staged_whole(cache: Path, unpacked: dict[str, str]) -> None:
    """Exactly one staged copy, each file whole, and nothing else (no temp folder, no part file, no empty folder)."""
    files = _staged(cache)
    keys = {f.split("/")[1] for f in files}
    assert len(keys) == 1, files
    key = keys.pop()
    assert files == sorted(f"fashion-mnist/{key}/FashionMNIST/raw/{f}" for f in FILES), files
    for f in FILES:
        data = (cache / "fashion-mnist" / key / "FashionMNIST" / "raw" / f).read_bytes()
        assert hashlib.sha256(data).hexdigest() == unpacked[f], f"{f} staged incomplete"
    dirs = {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_dir()}
    assert dirs == {"fashion-mnist", f"fashion-mnist/{key}", f"fashion-mnist/{key}/FashionMNIST",
                    f"fashion-mnist/{key}/FashionMNIST/raw"}, sorted(dirs)


# --------------------------------------------------------------------------- environment cases


@dataclass
class EnvCase:
    name: str
    setup: Callable  # (ctx, fake) -> argv; sets the environment through ctx.patch
    fragment: str = ""  # the one error line must say this; "" means the command must succeed
    check: Callable | None = None  # (ctx, out) -> None, for the cases that succeed


ENV_CASES: list[EnvCase] = []


def env_case(name: str, fragment: str = "", check: Callable | None = None):
    def wrap(fn):
        ENV_CASES.append(EnvCase(name, fn, fragment, check))
        return fn
    return wrap


def _bad_places(ctx) -> dict[str, str]:
    return {"under-a-file": str(ctx.file / "sub"), "is-a-file": str(ctx.file), "in-proc": PROC}


def _staged_in(where: Callable) -> Callable:
    def check(ctx, out):
        cache = where(ctx)
        assert _staged(cache), f"nothing staged under {cache}"
        assert not list(ctx.work.iterdir()), "something was written into the working folder"
    return check


for _place in ("under-a-file", "is-a-file", "in-proc"):
    def _cache_bad(ctx, fake, place=_place):
        ctx.patch.setenv("REPBENCH_CACHE", _bad_places(ctx)[place])
        return _run_fm(ctx, fake)

    def _home_bad(ctx, fake, place=_place):
        ctx.patch.setenv("HOME", _bad_places(ctx)[place])
        return _run_fm(ctx, fake)

    def _data_bad(ctx, fake, place=_place):
        ctx.patch.setenv("REPBENCH_DATA", _bad_places(ctx)[place])
        return _run_fm(ctx, None)

    def _fetch_home_bad(ctx, fake, place=_place):
        ctx.patch.setenv("HOME", _bad_places(ctx)[place])
        return ["data", "fetch", "fashion-mnist"]

    def _fetch_cache_bad(ctx, fake, place=_place):
        ctx.patch.setenv("REPBENCH_CACHE", _bad_places(ctx)[place])
        return ["data", "fetch", "fashion-mnist"]

    def _fetch_data_bad(ctx, fake, place=_place):
        ctx.patch.setenv("REPBENCH_DATA", _bad_places(ctx)[place])
        return ["data", "fetch", "fashion-mnist"]

    ENV_CASES += [
        EnvCase(f"run-cache-env-{_place}", _cache_bad, "REPBENCH_CACHE"),
        EnvCase(f"run-home-{_place}", _home_bad, "HOME"),
        EnvCase(f"run-data-env-{_place}", _data_bad, "REPBENCH_DATA"),
        EnvCase(f"fetch-home-{_place}", _fetch_home_bad, "HOME"),
        EnvCase(f"fetch-cache-env-{_place}", _fetch_cache_bad, "REPBENCH_CACHE"),
        EnvCase(f"fetch-data-env-{_place}", _fetch_data_bad, "REPBENCH_DATA"),
    ]


@env_case("run-cache-env-empty-means-unset", check=_staged_in(lambda ctx: ctx.home / ".cache" / "repbench"))
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_CACHE", "")
    return _run_fm(ctx, fake)


@env_case("run-cache-env-blank-means-unset", check=_staged_in(lambda ctx: ctx.home / ".cache" / "repbench"))
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_CACHE", "   ")
    return _run_fm(ctx, fake)


@env_case("run-cache-env-empty-and-home-unwritable", "HOME")
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_CACHE", "")
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    return _run_fm(ctx, fake)


@env_case("run-home-unwritable-but-cache-env-set", check=_staged_in(lambda ctx: ctx.d / "cache"))
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    ctx.patch.setenv("REPBENCH_CACHE", str(ctx.d / "cache"))
    return _run_fm(ctx, fake)


@env_case("run-home-empty-means-the-password-database", check=_staged_in(lambda ctx: ctx.d / "pw" / ".cache" / "repbench"))
def _(ctx, fake):
    ctx.patch.setenv("HOME", "")
    ctx.patch.setattr("pwd.getpwuid", lambda uid: SimpleNamespace(pw_dir=str(ctx.d / "pw")))
    return _run_fm(ctx, fake)


@env_case("run-home-relative", "HOME")
def _(ctx, fake):
    ctx.patch.setenv("HOME", "relative/home")
    return _run_fm(ctx, fake)


@env_case("run-data-env-empty-means-unset", check=_staged_in(lambda ctx: ctx.home / ".cache" / "repbench"))
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_DATA", "")
    ctx.patch.setattr(fm, "DEBIAN_DIR", fake)  # with REPBENCH_DATA unset the Debian folder is looked at
    return _run_fm(ctx, None)


@env_case("run-data-env-missing-folder", "REPBENCH_DATA")
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_DATA", str(ctx.d / "nowhere"))
    return _run_fm(ctx, None)


@env_case("run-data-env-unwritable-home-is-fine", check=_staged_in(lambda ctx: ctx.d / "cache"))
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_DATA", str(fake))
    ctx.patch.setenv("REPBENCH_CACHE", str(ctx.d / "cache"))
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    return _run_fm(ctx, None)


def _says_already(ctx, out):
    assert "already" in out and not list(ctx.work.iterdir())


@env_case("fetch-home-unwritable-data-env-holds-plain-files", check=_says_already)
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    ctx.patch.setenv("REPBENCH_DATA", str(ctx.plain))
    return ["data", "fetch", "fashion-mnist"]


@env_case("fetch-home-unwritable-data-env-holds-gz-files", "HOME")  # the .gz files are unpacked into the cache
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    ctx.patch.setenv("REPBENCH_DATA", str(fake))
    return ["data", "fetch", "fashion-mnist"]


@env_case("fetch-data-env-holds-nothing", "holds no Fashion-MNIST")
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_DATA", str(ctx.home))
    return ["data", "fetch", "fashion-mnist"]


def _nothing_cached(ctx, out):
    assert not (ctx.home / ".cache").exists() and not list(ctx.work.iterdir())


@env_case("run-plain-files-home-unwritable", check=_nothing_cached)
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    return _run_fm(ctx, ctx.plain)


@env_case("fetch-cache-env-empty-and-home-unwritable", "HOME")
def _(ctx, fake):
    ctx.patch.setenv("REPBENCH_CACHE", "")
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    return ["data", "fetch", "fashion-mnist"]


@env_case("fetch-digits-home-unwritable", check=lambda ctx, out: None)
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    return ["data", "fetch", "digits"]


@env_case("run-digits-needs-no-cache", check=lambda ctx, out: None)
def _(ctx, fake):
    ctx.patch.setenv("HOME", str(ctx.file / "home"))
    ctx.patch.setenv("REPBENCH_CACHE", str(ctx.file / "cache"))
    return ["run", "--method", "raw", "--dataset", "digits", *TINY, "--out", ctx.d / "out"]


@env_case("run-fmnist-wrong-size-stages-nothing", "expected 60000/10000")
def _(ctx, fake):
    small = ctx.d / "small"
    small.mkdir()
    for prefix in ("train", "t10k"):
        x, y = _split(30)
        _idx_gz(small / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx_gz(small / f"{prefix}-labels-idx1-ubyte.gz", y)
    return _run_fm(ctx, small)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.name for c in ENV_CASES])
def test_environment(case, env, fake, plain, cli):
    env.plain = plain
    argv = case.setup(env, fake)
    before = _snapshot(env.d)
    code, out, err = cli(*argv)
    assert "Traceback" not in err and "Warning" not in err and "warning" not in err, err
    if case.fragment:
        assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
        assert case.fragment in err, err
        assert code == 2 and out == ""
        assert _snapshot(env.d) == before, "something was written"
    else:
        assert code == 0, err
        assert "error" not in err, err
        case.check(env, out)


def test_environment_cases_cover_every_variable_and_place():
    names = " ".join(c.name for c in ENV_CASES)
    for var in ("cache-env", "home", "data-env"):
        for place in ("empty", "under-a-file", "is-a-file", "in-proc"):
            assert re.search(rf"{var}-{place}", names), f"no case for {var} {place}"


# --------------------------------------------------------------------------- staging into the cache


def _stage(fake: Path, cache: Path) -> None:
    """Child process body: stage and load the fake through the loader, as a run does."""
    os.environ["REPBENCH_CACHE"] = str(cache)
    fm.fashion_mnist(str(fake))


def _temp_name(fake: Path, pid: int, host: str | None = None) -> str:
    key = hashlib.sha256(str(fake.resolve()).encode()).hexdigest()[:12]
    return f".{key}.{pid}.{host or HOST}.tmp"


KILL_SEEDS = range(8)


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_while_staging_then_rerun(seed, env, fake, unpacked, cli):
    cache = env.d / "cache"
    env.patch.setenv("REPBENCH_CACHE", str(cache))
    proc = multiprocessing.get_context("fork").Process(target=_stage, args=(fake, cache))
    proc.start()
    deadline = time.monotonic() + 30
    while not (cache / "fashion-mnist").exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(random.Random(seed).uniform(0, 0.12))  # somewhere in the unpacking (about 0.1 s here)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    # A reader right after the kill: either no staged copy or a whole one, never a half-written one.
    for key_dir in (cache / "fashion-mnist").glob("[0-9a-f]*"):
        raw = key_dir / "FashionMNIST" / "raw"
        assert sorted(p.name for p in raw.iterdir()) == sorted(FILES), "a staged folder is visible half-filled"
    code, out, err = cli(*_run_fm(env, fake))
    assert code == 0, err
    _assert_staged_whole(cache, unpacked)


@dataclass
class Leftover:
    name: str
    make: Callable  # (cache parent, fake, ctx) -> folder name
    removed: bool


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


LEFTOVERS = [
    Leftover("dead-process-temp-folder", lambda parent, fake, ctx: _temp_name(fake, _dead_pid()), True),
    Leftover("dead-process-temp-folder-of-another-dataset-copy",
             lambda parent, fake, ctx: f".0123456789ab.{_dead_pid()}.{HOST}.tmp", True),
    Leftover("live-process-temp-folder", lambda parent, fake, ctx: _temp_name(fake, ctx.sleeper.pid), False),
    Leftover("other-host-temp-folder", lambda parent, fake, ctx: _temp_name(fake, _dead_pid(), "otherhost"), False),
    Leftover("not-ours-hidden-folder", lambda parent, fake, ctx: ".notes.tmp", False),
    Leftover("not-ours-pid-like-folder", lambda parent, fake, ctx: f"keep.{_dead_pid()}.tmp", False),
]


@pytest.mark.parametrize("left", LEFTOVERS, ids=[x.name for x in LEFTOVERS])
def test_next_run_cleans_only_dead_temp_folders(left, env, fake, cli):
    cache = env.d / "cache"
    env.patch.setenv("REPBENCH_CACHE", str(cache))
    parent = cache / "fashion-mnist"
    parent.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        env.sleeper = sleeper
        try:
            name = left.make(parent, fake, env)
            (parent / name / "FashionMNIST" / "raw").mkdir(parents=True)
            (parent / name / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"half")
            code, out, err = cli(*_run_fm(env, fake))
            assert code == 0, err
            assert (parent / name).exists() != left.removed
        finally:
            sleeper.kill()


def test_full_disk_while_unpacking_leaves_no_temp_folder(env, fake, cli):
    cache = env.d / "cache"
    env.patch.setenv("REPBENCH_CACHE", str(cache))
    calls = []

    def full(fd):
        calls.append(fd)
        raise OSError(28, "No space left on device")
    env.patch.setattr(os, "fsync", full)
    code, out, err = cli(*_run_fm(env, fake))
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    assert calls, "staging never synced its files"
    assert _staged(cache) == [] and not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_truncated_gzip_leaves_no_temp_folder(env, fake, cli):
    cache = env.d / "cache"
    env.patch.setenv("REPBENCH_CACHE", str(cache))
    cut = env.d / "cut"
    cut.mkdir()
    for f in FILES:
        data = (fake / f"{f}.gz").read_bytes()
        (cut / f"{f}.gz").write_bytes(data[: len(data) // 2] if f.startswith("train-images") else data)
    code, out, err = cli(*_run_fm(env, cut))
    assert code == 2 and err.count("\n") == 1 and "corrupt" in err and str(cut) in err, err
    assert _staged(cache) == [] and not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_newer_source_is_staged_again(env, fake, unpacked, cli, tmp_path):
    cache = env.d / "cache"
    env.patch.setenv("REPBENCH_CACHE", str(cache))
    src = tmp_path / "src"
    src.mkdir()
    for f in FILES:
        (src / f"{f}.gz").write_bytes((fake / f"{f}.gz").read_bytes())
    assert cli(*_run_fm(env, src))[0] == 0
    staged = next(cache.glob("fashion-mnist/*/FashionMNIST/raw/train-labels-idx1-ubyte"))
    staged.write_bytes(b"stale")
    os.utime(staged, (1, 1))
    assert cli(*_run_fm(env, src), "--force")[0] == 0  # the same config again: rerun, not skipped
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == unpacked["train-labels-idx1-ubyte"]


# --------------------------------------------------------------------------- matplotlib's config folder

PLOT = ("from bench.stats import budget_curve, plot_budget_curves; "
        "plot_budget_curves({'a': budget_curve([0.1, 0.3, 0.2])}, 'curve.png')")


def test_plot_with_unwritable_home_and_cache_says_one_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HOME=str(tmp_path / "file.txt" / "home"), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", PLOT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("repbench: warning: "), res.stderr


@dataclass
class MplCase:
    name: str
    env: Callable  # ctx -> {variable: value}
    expect: Callable  # ctx -> the MPLCONFIGDIR matplotlib gets, or None for a fresh temporary folder


MPL_CASES = [
    MplCase("default-writable", lambda c: {}, lambda c: c.home / ".config" / "matplotlib"),
    MplCase("mplconfigdir-set-is-kept", lambda c: {"MPLCONFIGDIR": str(c.d / "mine")}, lambda c: c.d / "mine"),
    MplCase("home-unwritable-cache-env-set", lambda c: {"HOME": str(c.file / "h"), "REPBENCH_CACHE": str(c.d / "cache")},
            lambda c: c.d / "cache" / "matplotlib"),
    MplCase("xdg-config-under-a-file", lambda c: {"XDG_CONFIG_HOME": str(c.file / "x")},
            lambda c: c.home / ".cache" / "repbench" / "matplotlib"),
    MplCase("home-empty-means-the-password-database", lambda c: {"HOME": ""}, lambda c: c.d / "pw" / ".config" / "matplotlib"),
    MplCase("home-relative", lambda c: {"HOME": "rel", "REPBENCH_CACHE": str(c.d / "cache")},
            lambda c: c.d / "cache" / "matplotlib"),
    MplCase("home-and-cache-unwritable", lambda c: {"HOME": str(c.file / "h")}, lambda c: None),
    MplCase("home-fine-cache-env-a-file-default-wins", lambda c: {"REPBENCH_CACHE": str(c.file)},
            lambda c: c.home / ".config" / "matplotlib"),
]


@pytest.mark.parametrize("case", MPL_CASES, ids=[c.name for c in MPL_CASES])
def test_matplotlib_config_folder(case, env, capsys):
    env.patch.setenv("MPLCONFIGDIR", "")  # recorded, so the folder chosen below is undone after the test
    env.patch.setattr("pwd.getpwuid", lambda uid: SimpleNamespace(pw_dir=str(env.d / "pw")))
    for var, value in case.env(env).items():
        env.patch.setenv(var, value)
    prepare_matplotlib()
    chosen, err = Path(os.environ["MPLCONFIGDIR"]), capsys.readouterr().err
    expected = case.expect(env)
    if expected is None:
        assert chosen.is_dir() and chosen.name.startswith("repbench-matplotlib-"), chosen
        assert err.count("\n") == 1 and err.startswith("repbench: warning: "), err
    else:
        assert chosen == expected and err == "", (chosen, err)
    assert not list(env.work.iterdir())


# --------------------------------------------------------------------------- tables

GOOD = {"run_id": "r", "status": "ok",
        "config": {"suite": "s", "dataset": "digits", "backbone": "convnet", "method": "raw", "seed": 0, "epochs": 1,
                   "recipe_name": "unified", "method_args": {}},
        "data": {"train": 100, "test": 50}, "timing": {"train_s": 0.5}, "throughput": {"images_per_s": 10.0},
        "metrics": {"knn": {"top1": 0.9, "k": 20}}}
DROP = object()


def _record(**changes) -> str:
    """GOOD with changes at paths written with "__" (config__suite); DROP removes the key."""
    rec = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = rec
        for p in parents:
            node = node[p]
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return json.dumps(rec)


MALFORMED = {
    "no-config-suite": _record(config__suite=DROP),
    "no-config-method": _record(config__method=DROP),
    "no-config-seed": _record(config__seed=DROP),
    "metrics-a-list": _record(metrics=[]),
    "metrics-null": _record(metrics=None),
    "metric-entry-not-a-dict": _record(metrics={"knn": 0.9}),
    "metric-value-a-string": _record(metrics={"knn": {"top1": "high"}}),
    "metric-value-a-list": _record(metrics={"knn": {"top1": [0.9]}}),
    "metric-value-a-bool": _record(metrics={"knn": {"top1": True}}),
    "data-null": _record(data=None),
    "data-a-list": _record(data=[100]),
    "config-a-list": _record(config=["suite", "s"]),
    "config-a-string": _record(config="s"),
    "config-null": _record(config=None),
    "suite-a-dict": _record(config__suite={"name": "s"}),
    "suite-null": _record(config__suite=None),
    "method-a-number": _record(config__method=3),
    "seed-a-string": _record(config__seed="0"),
    "epochs-a-string": _record(config__epochs="one"),
    "method-args-a-list": _record(config__method_args=["temperature", 0.1]),
    "timing-a-string": _record(timing="fast"),
    "throughput-a-list": _record(throughput=[]),
    "status-a-number": _record(status=5),
    "record-a-list": "[]",
    "record-a-number": "3",
    "record-a-string": '"record"',
    "record-deeply-nested": '{"config": ' + "[" * 100000 + "]" * 100000 + "}",
    "record-a-folder": None,
}


@pytest.fixture
def runs(tmp_path):
    good = tmp_path / "runs" / "s" / "good"
    good.mkdir(parents=True)
    (good / "record.json").write_text(json.dumps(GOOD))
    return tmp_path / "runs"


@pytest.mark.parametrize("name", MALFORMED)
def test_table_malformed_record(name, runs, cli):
    bad = runs / "s" / "bad" / "record.json"
    bad.parent.mkdir()
    if MALFORMED[name] is None:
        bad.mkdir()
    else:
        bad.write_text(MALFORMED[name])
    code, out, err = cli("table", "--runs", runs)
    assert "Traceback" not in err
    assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
    assert str(bad) in err, err
    assert code == 2 and out == ""
    assert not list(runs.glob("table.*")), "a table was written"


def test_table_help_says_what_a_malformed_record_does(capsys):
    with pytest.raises(SystemExit):
        main(["table", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "malformed" in text and "exit 2" in text, text


def _table_header(runs: Path) -> list[str]:
    lines = (runs / "table.md").read_text().splitlines()
    return [c.strip() for c in next(line for line in lines if line.startswith("|")).strip("|").split("|")]


@pytest.mark.parametrize("suites", [("a", "b"), ("a", "a")], ids=["mixed-suites", "one-suite"])
def test_table_suite_column(suites, tmp_path, cli):
    for i, suite in enumerate(suites):
        rec = json.loads(_record(config__suite=suite, config__seed=i))
        (tmp_path / "runs" / suite / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / suite / str(i) / "record.json").write_text(json.dumps(rec))
    code, out, err = cli("table", "--runs", tmp_path / "runs")
    assert code == 0, err
    header = _table_header(tmp_path / "runs")
    rows = [line for line in (tmp_path / "runs" / "table.md").read_text().splitlines() if line.startswith("|")][2:]
    if len(set(suites)) > 1:
        assert header[0] == "suite", header
        assert len(rows) == 2 and {r.strip("|").split("|")[0].strip() for r in rows} == set(suites)
    else:
        assert "suite" not in header and len(rows) == 1
