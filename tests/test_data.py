import pytest
import torch

from bench.data import DATASETS, class_subset, load_dataset
from bench.data.fashion_mnist import fmnist_candidates


def test_digits_is_uint8_nchw_with_int64_labels():
    ds = load_dataset("digits")
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 8, 8)
    assert ds.train_y.dtype == torch.int64 and ds.num_classes == 10
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert int(ds.train_x.max()) == 255


def test_per_class_subset_is_balanced_and_fixed():
    ds = load_dataset("digits", per_class=20, test_per_class=5)
    assert ds.train_y.bincount().tolist() == [20] * 10
    assert ds.test_y.bincount().tolist() == [5] * 10
    again = load_dataset("digits", per_class=20)
    assert torch.equal(ds.train_x, again.train_x)


def test_class_subset_takes_all_when_class_is_small():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    idx = class_subset(labels, 2)
    assert labels[idx].bincount().tolist() == [2, 2, 1]


def test_lookup_order(monkeypatch):
    monkeypatch.delenv("REPBENCH_DATA", raising=False)
    assert str(fmnist_candidates(None)[0]) == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setenv("REPBENCH_DATA", "/somewhere")
    assert [str(p) for p in fmnist_candidates(None)] == ["/somewhere"]
    assert [str(p) for p in fmnist_candidates("/explicit")] == ["/explicit"]


def _fmnist_available() -> bool:
    try:
        DATASETS.get("fashion-mnist")()
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _fmnist_available(), reason="Fashion-MNIST not installed (repbench data fetch fashion-mnist)")
def test_fashion_mnist_through_torchvision():
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top"
