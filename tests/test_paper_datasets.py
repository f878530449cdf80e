"""The paper datasets (CIFAR-10/100, STL-10, ImageFolder trees, ImageNet-100) and datasets registered from outside.

Every fake dataset here is written in its published format (CIFAR's pickled batch dicts, STL-10's column-major
binaries, JPEG/PNG class folders) and read through the same loader a user's real folder is; bad folders give one
line on stderr, exit 2, and nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import UsageError
from bench.data import DATASETS, Dataset, _plugins, load_dataset
from bench.data.folders import IMAGENET_NORM, imagenet100_classes
from bench.data.torchvision_sets import CIFAR10_NORM, SPECS

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Noise plus a per-class brightness, so a probe has something to find."""
    x = RNG.integers(0, 60, (len(labels), *shape)) + labels.reshape(-1, *[1] * len(shape)) * 19
    return x.astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 50) -> Path:
    d = root / "cifar-10-batches-py"
    for i in range(1, 6):
        y = np.arange(per_batch) % 10
        _pickle(d / f"data_batch_{i}", {"data": _images(y, (3072,)), "labels": y.tolist(), "batch_label": f"batch {i}"})
    y = np.arange(test) % 10
    _pickle(d / "test_batch", {"data": _images(y, (3072,)), "labels": y.tolist()})
    _pickle(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return root


def write_cifar100(root: Path) -> Path:
    d = root / "cifar-100-python"
    for name, n in (("train", 200), ("test", 100)):
        y = np.arange(n) % 100
        _pickle(d / name, {"data": _images(y % 10, (3072,)), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()})
    _pickle(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                         "coarse_label_names": [f"k{i}" for i in range(20)]})
    return root


def write_stl10(root: Path, n_train: int = 100, n_test: int = 50) -> tuple[Path, np.ndarray]:
    """STL-10's binaries: images stored column-major (N, 3, W, H), labels 1..10, one byte each."""
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 10
        x = _images(y, (3, 96, 96))
        (d / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        (d / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        if split == "train":
            train_x = x
    (d / "unlabeled_X.bin").write_bytes(_images(np.zeros(20, int), (3, 96, 96)).tobytes())
    return root, train_x


def write_tree(root: Path, classes: list[str], train: int = 10, val: int = 5, size: tuple[int, int] = (24, 18)) -> Path:
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes if n else []):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = _images(np.array([c % 10]), (size[1], size[0], 3))[0]
                img = Image.fromarray(pixels)
                if i % 3 == 2:  # grey PNGs among RGB JPEGs: every image comes out RGB
                    img.convert("L").save(root / split / name / f"{i}.png")
                else:
                    img.save(root / split / name / f"{i}.JPEG", quality=90)
    return root


# --------------------------------------------------------------------------- each loads, in the right shape


def test_cifar10_reads_the_pickled_batches(tmp_path):
    ds = load_dataset("cifar10", str(write_cifar10(tmp_path)))
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (50, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.classes == [f"c{i}" for i in range(10)] and ds.train_y.tolist()[:12] == [*range(10), 0, 1]
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert torch.equal(ds.train_x[0].flatten(), torch.from_numpy(batch["data"][0]))  # channel-major, as published
    assert ds.mean_std() == CIFAR10_NORM


def test_cifar100_reads_fine_labels_and_accepts_the_folder_itself(tmp_path):
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", str(tmp_path / "cifar-100-python"))
    assert ds.num_classes == 100 and ds.classes[7] == "f7"
    assert ds.train_y.tolist()[:101] == [*range(100), 0] and len(ds.test_y) == 100


def test_stl10_reads_column_major_binaries(tmp_path):
    root, train_x = write_stl10(tmp_path)
    ds = load_dataset("stl10", str(root))
    assert ds.train_x.shape == (100, 3, 96, 96) and torch.equal(ds.train_x, torch.from_numpy(train_x))
    assert ds.train_y.tolist()[:10] == list(range(10)) and ds.classes[0] == "airplane" and len(ds.test_y) == 50


def test_imagefolder_decodes_and_resizes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_IMAGE_SIZE", "16")
    ds = load_dataset("imagefolder", str(write_tree(tmp_path, ["cat", "ant", "bee"], train=4, val=2)))
    assert ds.classes == ["ant", "bee", "cat"]
    assert ds.train_x.shape == (12, 3, 16, 16) and ds.test_x.shape == (6, 3, 16, 16)
    assert ds.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_imagefolder_default_size_and_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_DATA", str(write_tree(tmp_path, ["a", "b"], train=1, val=1)))
    assert load_dataset("imagefolder").train_x.shape == (2, 3, 64, 64)


def test_imagenet100_selects_cmc_classes(tmp_path, monkeypatch):
    wanted = imagenet100_classes()
    assert len(wanted) == len(set(wanted)) == 100 and all(w.startswith("n") and len(w) == 9 for w in wanted)
    monkeypatch.setenv("REPBENCH_IMAGE_SIZE", "8")
    write_tree(tmp_path, [*wanted, "n99999999", "n00000001"], train=1, val=1, size=(8, 8))
    ds = load_dataset("imagenet100", str(tmp_path))
    assert ds.classes == sorted(wanted) and len(ds.train_y) == len(ds.test_y) == 100
    assert ds.mean_std() == IMAGENET_NORM
    assert load_dataset("imagenet", str(tmp_path)).num_classes == 102


# --------------------------------------------------------------------------- a tiny run trains and is scored


def _record(out: Path) -> dict:
    return json.loads(next(out.glob("runs/*/*/record.json")).read_text())


@pytest.mark.parametrize("dataset,method,write", [
    ("cifar10", "simclr", write_cifar10),
    ("stl10", "raw", lambda d: write_stl10(d)[0]),
    ("imagefolder", "raw", lambda d: write_tree(d, list("vwxyz"), train=10, val=5)),
])
def test_tiny_run_is_scored(dataset, method, write, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_IMAGE_SIZE", "16")
    root, out = write(tmp_path / "data"), tmp_path / "out"
    code, _, err = cli("run", "--method", method, "--dataset", dataset, "--data-root", root, "--per-class", "10",
                       "--test-per-class", "5", "--epochs", "1", "--batch-size", "50", "--protocols", "knn",
                       "--no-progress", "--out", out)
    assert code == 0, err
    rec = _record(out)
    assert rec["data"]["name"] == dataset and rec["data"]["source"] == str(root)
    assert 0 <= rec["metrics"]["knn"]["top1"] <= 1


# --------------------------------------------------------------------------- registered from outside the package

PLUGIN = '''
import torch
from bench.data import Dataset

def load(data_root=None):
    x = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    y = torch.arange(20) % 2
    return Dataset("mine", x, y, x[:10], y[:10], ["a", "b"], source=str(data_root))
'''


def test_plugin_from_env_is_listed_and_loads(tmp_path, monkeypatch):
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "REPBENCH_DATASETS": "mine=myplugin:load, cifar10=myplugin:load"}
    listed = subprocess.run([sys.executable, "-m", "bench", "list", "datasets"], env=env, capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout.split()
    assert "mine" in listed and listed.count("cifar10") == 1
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myplugin", raising=False)  # another test's copy of the module
    assert isinstance(_plugins("mine=myplugin:load")["mine"](data_root="/d"), Dataset)
    assert DATASETS.get("cifar10") is not None  # a plugin never replaces a built-in name


@pytest.mark.parametrize("spec,fragment", [("mine=nosuchmodule:load", "cannot be loaded"),
                                           ("mine=myplugin:absent", "cannot be loaded"),
                                           ("mine", "not NAME=MODULE:FUNCTION"),
                                           ("mine=myplugin:wrong", "not a bench.data.Dataset")])
def test_bad_plugin_is_one_line(spec, fragment, tmp_path, monkeypatch):
    (tmp_path / "myplugin.py").write_text(PLUGIN + "\ndef wrong(data_root=None):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myplugin", raising=False)  # another test's copy of the module
    with pytest.raises(UsageError, match=fragment) as err:
        _plugins(spec)["mine"]()
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- bad folders: one line, exit 2

def _corrupt_batch(d: Path) -> None:
    (write_cifar10(d) / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"\x80\x02garbage" * 10)


def _stl_bad_labels(d: Path) -> None:
    (write_stl10(d)[0] / "stl10_binary" / "train_y.bin").write_bytes(bytes(100))  # 0 is no class: labels are 1..10


def _stl_truncated(d: Path) -> None:
    p = write_stl10(d)[0] / "stl10_binary" / "test_X.bin"
    p.write_bytes(p.read_bytes()[:-7])


def _flat_val(d: Path) -> None:
    write_tree(d, ["a", "b"], train=2, val=0)
    (d / "val").mkdir()
    Image.new("RGB", (8, 8)).save(d / "val" / "ILSVRC2012_val_00000001.JPEG")


def _broken_jpeg(d: Path) -> None:
    (write_tree(d, ["a", "b"], train=2, val=1) / "train" / "b" / "0.JPEG").write_bytes(b"\xff\xd8 not a jpeg")


def _imagenet_missing_class(d: Path) -> None:
    wanted = imagenet100_classes()
    write_tree(d, wanted[:-1], train=1, val=0, size=(8, 8))
    write_tree(d, wanted, train=0, val=1, size=(8, 8))


BAD: dict[str, tuple[str, Callable[[Path], object], str, dict]] = {
    "cifar10-empty-folder": ("cifar10", lambda d: None, "CIFAR-10 not found in", {}),
    "cifar10-missing-batch": ("cifar10", lambda d: (write_cifar10(d) / "cifar-10-batches-py" / "data_batch_3").unlink(),
                              "lacks data_batch_3", {}),
    "cifar10-corrupt-batch": ("cifar10", _corrupt_batch, "corrupt", {}),
    "cifar100-no-meta": ("cifar100", lambda d: (write_cifar100(d) / "cifar-100-python" / "meta").unlink(), "lacks meta", {}),
    "stl10-label-zero": ("stl10", _stl_bad_labels, "corrupt", {}),
    "stl10-truncated": ("stl10", _stl_truncated, "corrupt", {}),
    "imagefolder-no-val": ("imagefolder", lambda d: write_tree(d, ["a"], 1, 0),
                           "has no val/ folder", {}),
    "imagefolder-flat-val": ("imagefolder", _flat_val, "not in ImageFolder layout", {}),
    "imagefolder-class-mismatch": ("imagefolder", lambda d: (write_tree(d, ["a", "b"], 1, 0), write_tree(d, ["a", "c"], 0, 1)),
                                   "different classes", {}),
    "imagefolder-broken-jpeg": ("imagefolder", _broken_jpeg, "cannot decode the image", {}),
    "imagefolder-bad-size": ("imagefolder", lambda d: write_tree(d, ["a"], 1, 1), "REPBENCH_IMAGE_SIZE=big",
                             {"REPBENCH_IMAGE_SIZE": "big"}),
    "imagenet100-missing-class": ("imagenet100", _imagenet_missing_class, "lacks 1 of the 100 classes", {}),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_folder_is_one_line(name, cli, tmp_path, monkeypatch):
    dataset, make, fragment, env = BAD[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code, out, err = cli("run", "--method", "raw", "--dataset", dataset, "--data-root", data, "--protocols", "knn",
                         "--no-progress", "--out", tmp_path / "out")
    assert "Traceback" not in err
    assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    assert code == 2 and out == ""
    assert _snapshot(tmp_path) == before, "something was written"


def test_every_torchvision_set_has_a_bad_case():
    assert {d for d, *_ in BAD.values()} >= set(SPECS) | {"imagefolder", "imagenet100"}


def test_fetch_keeps_a_folder_found_and_refuses_imagenet(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("REPBENCH_DATA", str(write_cifar10(tmp_path)))
    code, out, _ = cli("data", "fetch", "cifar10")
    assert code == 0 and out.strip() == f"CIFAR-10 already in {tmp_path}"
    code, out, err = cli("data", "fetch", "imagenet")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--data-root ROOT" in err
