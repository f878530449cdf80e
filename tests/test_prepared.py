"""Prepared stores (`repbench data prepare`) and streaming training images from them.

A tiny JPEG/PNG tree is prepared through the CLI, read back memory-mapped, trained on and scored; a streamed run
and an in-memory run of one config reach bit-identical weights; bad stores and bad prepare inputs are one line,
exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_paper_datasets import write_tree

from bench.config import RunConfig
from bench.data import Dataset, load_dataset
from bench.data.prepared import is_mapped
from bench.data.stream import Resident, Streamed, training_source
from bench.runner import build_method
from bench.store import HOST
from bench.train import Trainer, seed_everything

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPBENCH_IMAGE_SIZE", raising=False)
    monkeypatch.delenv("REPBENCH_DATA", raising=False)


@pytest.fixture
def restore_determinism():
    yield
    seed_everything(0, deterministic=False)


def _tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tree", CLASSES, train=6, val=3, size=(30, 22))


def _prepare(cli, tree: Path, out: Path, size: int = 16, *extra) -> str:
    code, stdout, err = cli("data", "prepare", "imagefolder", "--size", size, "--data-root", tree, "--out", out,
                            "--workers", 0, *extra)
    assert code == 0, err
    return stdout


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- prepare, read, train


def test_prepare_writes_the_tree_run_pixels_and_exact_stats(cli, tmp_path):
    tree, store = _tree(tmp_path), tmp_path / "store"
    stdout = _prepare(cli, tree, store, 16, "--workers", 2)
    assert stdout.splitlines()[0] == str(store) and "images/s" in stdout
    meta = json.loads((store / "meta.json").read_text())
    assert meta["dataset"] == "imagefolder" and meta["size"] == 16 and meta["counts"] == {"train": 24, "test": 12}
    assert meta["classes"] == sorted(CLASSES) and meta["source"] == str(tree.resolve()) and meta["norm"] is None
    decoded = load_dataset("imagefolder", str(tree), image_size=16)  # the tree decoded in memory, as runs do
    stored = load_dataset("imagefolder", str(store))
    assert stored.source == str(store) and is_mapped(stored.train_x) and is_mapped(stored.test_x)
    for a, b in ((decoded.train_x, stored.train_x), (decoded.test_x, stored.test_x),
                 (decoded.train_y, stored.train_y), (decoded.test_y, stored.test_y)):
        assert torch.equal(a, b)
    assert np.allclose(stored.mean_std(), decoded.mean_std(), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "the temp folder outlived the rename"


def test_store_tensors_are_copy_on_write(cli, tmp_path):
    store = tmp_path / "store"
    _prepare(cli, _tree(tmp_path), store)
    before = (store / "train_x.npy").read_bytes()
    ds = load_dataset("imagefolder", str(store))
    ds.train_x[0] = 255  # a private page: the run's tensor changes, the file never does
    assert int(ds.train_x[0].min()) == 255 and (store / "train_x.npy").read_bytes() == before


def test_run_from_store_streams_and_is_scored(cli, tmp_path, monkeypatch):
    store, out = tmp_path / "store", tmp_path / "out"
    _prepare(cli, _tree(tmp_path), store)
    streamed = []
    monkeypatch.setattr(Streamed, "_host", lambda self, idx, f=Streamed._host: streamed.append(len(idx)) or f(self, idx))
    code, _, err = cli("run", "--dataset", "imagefolder", "--data-root", store, "--method", "simclr", "--backbone",
                       "convnet", "--epochs", "1", "--batch-size", "8", "--protocols", "knn", "--no-progress", "--out", out)
    assert code == 0, err
    rec = json.loads(next(out.glob("runs/*/*/record.json")).read_text())
    assert rec["data"]["source"] == str(store) and rec["data"]["train"] == 24 and rec["data"]["image_size"] == 16
    assert 0 <= rec["metrics"]["knn"]["top1"] <= 1 and rec["metrics"]["knn"]["n_train"] == 24
    assert rec["training"]["steps"] == 3 and 0 <= rec["throughput"]["data_wait_share"] <= 1
    assert streamed == [24, 8, 8, 8]  # the collapse probe, then each batch, read from the store on the host


def test_tree_run_finds_its_store_in_the_cache_only_while_the_tree_is_unchanged(cli, tmp_path):
    tree = _tree(tmp_path)
    code, stdout, err = cli("data", "prepare", "imagefolder", "--size", "16", "--data-root", tree, "--workers", "0")
    assert code == 0, err
    store = Path(stdout.splitlines()[0])
    assert store == tmp_path / "cache" / "prepared" / "imagefolder-16"
    assert load_dataset("imagefolder", str(tree), image_size=16).source == str(store)
    assert load_dataset("imagefolder", str(tree), image_size=24).source == str(tree)  # no store at that size
    img = next((tree / "train" / "ant").iterdir())
    os.utime(img, ns=(1, 1))
    assert load_dataset("imagefolder", str(tree), image_size=16).source == str(tree)


# --------------------------------------------------------------------------- streamed == resident


def _dataset(cli, tmp_path: Path, unlabeled: bool) -> Dataset:
    store = tmp_path / "store"
    _prepare(cli, _tree(tmp_path), store)
    ds = load_dataset("imagefolder", str(store))
    return replace(ds, unlabeled_x=ds.test_x) if unlabeled else ds  # any mapped images serve as an unlabeled part


def _resident(ds: Dataset) -> Dataset:
    clone = None if ds.unlabeled_x is None else ds.unlabeled_x.clone()
    return replace(ds, train_x=ds.train_x.clone(), unlabeled_x=clone)


def _train(ds: Dataset, run_dir: Path, method: str = "simclr") -> Trainer:
    cfg = RunConfig(method=method, dataset="imagefolder", epochs=2, batch_size=8, protocols=(), deterministic=True)
    trainer = Trainer(build_method(cfg, ds), ds, cfg, run_dir, progress=False)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("unlabeled", [False, True])
def test_streamed_and_resident_runs_reach_identical_weights(unlabeled, cli, tmp_path, restore_determinism):
    ds = _dataset(cli, tmp_path, unlabeled)
    streamed, resident = _train(ds, tmp_path / "a"), _train(_resident(ds), tmp_path / "b")
    assert isinstance(streamed.source, Streamed) and isinstance(resident.source, Resident)
    assert not isinstance(resident.source, Streamed)
    assert streamed.state.step == resident.state.step == 2 * ((24 + 12 * unlabeled) // 8)
    assert streamed.state.history == resident.state.history
    a, b = streamed.method.state_dict(), resident.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sources_give_the_same_batches_in_the_epochs_order(cli, tmp_path):
    ds = _dataset(cli, tmp_path, unlabeled=True)
    cpu = torch.device("cpu")
    streamed, resident = training_source(ds, cpu), training_source(_resident(ds), cpu)
    assert isinstance(streamed, Streamed) and len(streamed) == len(resident) == 36
    assert streamed.labels.tolist() == ds.train_y.tolist() + [-1] * 12
    order = torch.randperm(36, generator=torch.Generator().manual_seed(3))
    got, want = list(streamed.batches(order, 5, 7)), list(resident.batches(order, 5, 7))
    assert len(got) == 7
    for (i, x), (j, y) in zip(got, want, strict=True):
        assert torch.equal(i, j) and torch.equal(x, y)
    everything = torch.cat([ds.train_x, ds.unlabeled_x])
    assert torch.equal(got[3][1], everything[order[15:20]])
    assert torch.equal(training_source(ds, cpu, labelled_only=True).gather(torch.tensor([23, 0])), ds.train_x[[23, 0]])


def test_a_stream_left_early_stops_its_thread_and_errors_reach_the_loop(cli, tmp_path, monkeypatch):
    ds = _dataset(cli, tmp_path, unlabeled=False)
    source = training_source(ds, torch.device("cpu"))
    it = source.batches(torch.arange(24), 2, 12)
    next(it)
    it.close()  # what leaving run_epoch early (a diverged loss) does to the generator
    assert not [t for t in threading.enumerate() if t.name == "repbench-stream"]

    def broken(self, idx):
        raise OSError("disk gone")

    monkeypatch.setattr(Streamed, "_host", broken)
    with pytest.raises(OSError, match="disk gone"):
        list(source.batches(torch.arange(24), 2, 12))


# --------------------------------------------------------------------------- bad stores: one line, exit 2


def _replace_npy(store: Path, name: str, array: np.ndarray) -> None:
    np.save(store / name, array)


BAD_STORES = {
    "missing-file": (lambda s: (s / "test_y.npy").unlink(), "test_y.npy is missing", ()),
    "wrong-shape": (lambda s: _replace_npy(s, "train_x.npy", np.zeros((24, 3, 8, 8), np.uint8)), "expected uint8", ()),
    "wrong-dtype": (lambda s: _replace_npy(s, "train_y.npy", np.zeros(24, np.float32)), "expected int64", ()),
    "truncated": (lambda s: (s / "train_x.npy").write_bytes((s / "train_x.npy").read_bytes()[:-100]),
                  "not a readable .npy", ()),
    "pickled": (lambda s: np.save(s / "train_y.npy", np.array([{}] * 24, dtype=object)), "not a readable .npy", ()),
    "bad-label": (lambda s: _replace_npy(s, "train_y.npy", np.full(24, 9, np.int64)), "expected 0..3", ()),
    "bad-json": (lambda s: (s / "meta.json").write_text("{not json"), "meta.json unreadable", ()),
    "bad-meta": (lambda s: (s / "meta.json").write_text(json.dumps({"format": 1, "size": "16"})), "has no valid", ()),
    "nan-stats": (lambda s: _edit_meta(s, mean=[0.1, None, 0.2]), "no finite mean/std", ()),
    "other-dataset": (lambda s: None, "prepared from imagefolder, not imagenet", ("--dataset", "imagenet")),
    "other-size": (lambda s: None, "holds 16 px images but the run asks for 32 px", ("--image-size", "32")),
}


def _edit_meta(store: Path, **changes) -> None:
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize("name", list(BAD_STORES))
def test_bad_store_is_one_line_and_writes_nothing(name, cli, tmp_path):
    store = tmp_path / "store"
    _prepare(cli, _tree(tmp_path), store)
    damage, fragment, flags = BAD_STORES[name]
    damage(store)
    args = ["run", "--dataset", "imagefolder", "--data-root", store, "--method", "simclr", "--epochs", "1",
            "--batch-size", "8", "--protocols", "knn", "--no-progress", "--out", tmp_path / "out"]
    if flags and flags[0] == "--dataset":
        args[2] = flags[1]
    else:
        args += list(flags)
    before = _snapshot(tmp_path)
    code, out, err = cli(*args)
    assert code == 2 and out == "" and err.startswith("repbench: error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    assert _snapshot(tmp_path) == before, "something was written"


def test_env_image_size_other_than_the_store_is_refused(cli, tmp_path, monkeypatch):
    store = tmp_path / "store"
    _prepare(cli, _tree(tmp_path), store)
    monkeypatch.setenv("REPBENCH_IMAGE_SIZE", "24")
    with pytest.raises(Exception, match="holds 16 px images but the run asks for 24 px"):
        load_dataset("imagefolder", str(store))


# --------------------------------------------------------------------------- bad prepare input; killed prepares


def _broken_tree(tmp_path: Path) -> Path:
    tree = _tree(tmp_path)
    (tree / "val" / "cat" / "1.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    return tree


@pytest.mark.parametrize("args,fragment", [
    (("--out", "{out}"), "needs --size S"),
    (("--size", "4", "--out", "{out}"), "below the minimum"),
    (("--size", "16", "--out", "{busy}"), "exists and is not a prepared store"),
    (("--size", "16", "--out", "{out}", "--data-root", "{broken}"), "cannot decode the image"),
    (("--size", "16", "--out", "{out}", "--data-root", "{nowhere}"), "has no train or val/ folder"),
])
def test_bad_prepare_is_one_line_and_leaves_no_store(args, fragment, cli, tmp_path):
    paths = {"out": tmp_path / "store", "busy": tmp_path / "busy", "broken": _broken_tree(tmp_path),
             "nowhere": tmp_path / "nowhere"}
    paths["busy"].mkdir()
    (paths["busy"] / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, out, err = cli("data", "prepare", "imagefolder", "--workers", "0", *[a.format(**paths) for a in args])
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    assert _snapshot(tmp_path) == before, "something was written"


def test_fetch_refuses_prepare_options(cli):
    code, out, err = cli("data", "fetch", "cifar10", "--size", "32")
    assert code == 2 and err.count("\n") == 1 and "--size is an option of 'repbench data prepare'" in err


def test_a_killed_prepare_leaves_nothing_that_looks_finished(cli, tmp_path, monkeypatch):
    import bench.data.folders as folders

    tree, store = _tree(tmp_path), tmp_path / "store"
    stale = tmp_path / f".{'0' * 12}.999999999.{HOST}.tmp"  # what a killed earlier prepare left
    stale.mkdir()
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(path, size)

    real = folders.decode
    monkeypatch.setattr(folders, "decode", interrupted)
    code, _, err = cli("data", "prepare", "imagefolder", "--size", "16", "--data-root", tree, "--out", store,
                       "--workers", "0")
    assert code == 130 and not store.exists() and len(calls) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["tree"], "a temp folder was left, or the stale one not removed"


def test_prepare_refuses_a_dataset_runs_cannot_read_it_for_and_writes_nothing(cli, tmp_path):
    code, out, err = cli("data", "prepare", "digits", "--size", "16")
    assert code == 2 and out == "" and err.count("\n") == 1 and "digits cannot be prepared" in err, err
    assert not (tmp_path / "cache").exists(), "bad input created the cache"
