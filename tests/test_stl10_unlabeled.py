"""STL-10's unlabeled split: loaded through torchvision from unlabeled_X.bin, pre-trained on beside the labelled
train split (labels -1), never seen by the probes; a missing file is one line naming it and how to get it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_paper_datasets import write_stl10

from bench.config import RunConfig
from bench.data import load_dataset
from bench.data.prepared import is_mapped
from bench.data.stream import training_source
from bench.runner import context

N_TRAIN, N_TEST, N_UNLABELED = 40, 20, 60


def write_stl10_unlabeled(root: Path, n: int = N_UNLABELED) -> tuple[Path, np.ndarray]:
    """The published stl10_binary layout with unlabeled_X.bin too: uint8, each image column-major 3x96x96."""
    root, _ = write_stl10(root, N_TRAIN, N_TEST)
    x = np.random.default_rng(1).integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
    (root / "stl10_binary" / "unlabeled_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
    return root, x


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPBENCH_DATA", raising=False)


def _run(cli, tmp_path: Path, root: Path, method: str, size: int = 16) -> dict:
    out = tmp_path / f"out-{method}"
    code, _, err = cli("run", "--method", method, "--dataset", "stl10", "--data-root", root, "--image-size", size,
                       "--epochs", "2", "--batch-size", "16", "--protocols", "knn", "--no-progress", "--out", out)
    assert code == 0, err
    return json.loads(next(out.glob("runs/*/*/record.json")).read_text())


def test_unlabeled_split_loads_in_published_order(tmp_path):
    root, x = write_stl10_unlabeled(tmp_path / "data")
    ds = load_dataset("stl10", str(root))
    assert ds.unlabeled_x.shape == (N_UNLABELED, 3, 96, 96) and ds.unlabeled_x.dtype == torch.uint8
    assert torch.equal(ds.unlabeled_x, torch.from_numpy(x))
    assert len(ds.train_x) == N_TRAIN and len(ds.test_x) == N_TEST and ds.train_y.min() >= 0
    assert load_dataset("stl10", str(root), image_size=16).unlabeled_x.shape == (N_UNLABELED, 3, 16, 16)


def test_pretrains_on_train_plus_unlabeled_and_probes_on_train(cli, tmp_path):
    root, _ = write_stl10_unlabeled(tmp_path / "data")
    rec = _run(cli, tmp_path, root, "simclr")
    assert rec["data"]["train"] == N_TRAIN and rec["data"]["unlabeled"] == N_UNLABELED
    assert rec["training"]["steps_per_epoch"] == (N_TRAIN + N_UNLABELED) // 16
    assert rec["training"]["steps"] == 2 * ((N_TRAIN + N_UNLABELED) // 16)
    assert rec["metrics"]["knn"]["n_train"] == N_TRAIN and rec["metrics"]["knn"]["n_test"] == N_TEST
    assert rec["throughput"]["images"] == rec["training"]["steps"] * 16


def test_a_method_that_reads_labels_trains_on_the_labelled_images_only(cli, tmp_path):
    root, _ = write_stl10_unlabeled(tmp_path / "data")
    rec = _run(cli, tmp_path, root, "supervised")
    assert rec["training"]["steps"] == 2 * (N_TRAIN // 16)  # a label -1 would make cross-entropy raise


def test_context_counts_the_images_pretrained_on(tmp_path):
    root, _ = write_stl10_unlabeled(tmp_path / "data")
    ds = load_dataset("stl10", str(root), image_size=16)
    ssl = context(RunConfig(method="moco-v2", dataset="stl10", batch_size=16), ds)
    sup = context(RunConfig(method="supervised", dataset="stl10", batch_size=16), ds)
    assert ssl.num_train == N_TRAIN + N_UNLABELED and ssl.total_steps == (N_TRAIN + N_UNLABELED) // 16
    assert sup.num_train == N_TRAIN and sup.total_steps == N_TRAIN // 16


def test_batches_label_unlabeled_images_minus_one(tmp_path):
    root, _ = write_stl10_unlabeled(tmp_path / "data")
    ds = load_dataset("stl10", str(root), image_size=16)
    source = training_source(ds, torch.device("cpu"))
    assert len(source) == N_TRAIN + N_UNLABELED
    assert source.labels[:N_TRAIN].tolist() == ds.train_y.tolist() and set(source.labels[N_TRAIN:].tolist()) == {-1}
    idx = torch.tensor([N_TRAIN + 5, 3])
    assert torch.equal(source.gather(idx), torch.stack([ds.unlabeled_x[5], ds.train_x[3]]))


def test_missing_unlabeled_file_is_one_line(cli, tmp_path):
    root, _ = write_stl10(tmp_path / "data", N_TRAIN, N_TEST)
    (root / "stl10_binary" / "unlabeled_X.bin").unlink(missing_ok=True)  # whether or not the shared writer made one
    code, out, err = cli("run", "--method", "simclr", "--dataset", "stl10", "--data-root", root, "--protocols", "knn",
                         "--no-progress", "--out", tmp_path / "out")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "lacks unlabeled_X.bin" in err and "repbench data fetch stl10" in err
    assert not (tmp_path / "out").exists()


def test_truncated_unlabeled_file_is_one_line(cli, tmp_path):
    root, _ = write_stl10_unlabeled(tmp_path / "data")
    path = root / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    code, _, err = cli("run", "--method", "simclr", "--dataset", "stl10", "--data-root", root, "--protocols", "knn",
                       "--no-progress", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "unlabeled_X.bin is corrupt" in err, err


def test_prepared_stl10_keeps_the_unlabeled_split(cli, tmp_path):
    root, x = write_stl10_unlabeled(tmp_path / "data")
    store = tmp_path / "store"
    code, _, err = cli("data", "prepare", "stl10", "--size", "32", "--data-root", root, "--out", store)
    assert code == 0, err
    ds = load_dataset("stl10", str(store))
    assert is_mapped(ds.unlabeled_x) and ds.unlabeled_x.shape == (N_UNLABELED, 3, 32, 32)
    assert torch.equal(ds.unlabeled_x, load_dataset("stl10", str(root), image_size=32).unlabeled_x)
    assert json.loads((store / "meta.json").read_text())["counts"] == {"train": N_TRAIN, "test": N_TEST,
                                                                       "unlabeled": N_UNLABELED}
    rec = _run(cli, tmp_path, store, "simclr", size=32)
    assert rec["data"]["unlabeled"] == N_UNLABELED and rec["training"]["steps"] == 2 * ((N_TRAIN + N_UNLABELED) // 16)
