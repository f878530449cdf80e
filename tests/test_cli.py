"""The CLI contract: list output, and one-line errors with exit 2 and nothing written."""

import pytest
import torch

import methods
import protocols
from bench.data import DATASETS
from bench.experiments import SUITES
from methods.backbones import BACKBONES


@pytest.mark.parametrize("kind,registry", [("methods", methods.METHODS), ("protocols", protocols.PROTOCOLS),
                                           ("datasets", DATASETS), ("backbones", BACKBONES),
                                           ("suites", SUITES)])
def test_list_prints_one_name_per_line(cli, kind, registry):
    code, out, _ = cli("list", kind)
    assert code == 0
    assert out.split("\n")[:-1] == registry.names()


BAD_RUNS = [
    (["--method", "simclrr", "--dataset", "digits"], "Did you mean 'simclr'"),
    (["--method", "simclr", "--dataset", "digit"], "Did you mean 'digits'"),
    (["--method", "simclr", "--dataset", "digits", "--backbone", "resnet19"], "Did you mean 'resnet18'"),
    (["--suite", "quik"], "Did you mean 'quick'"),
    (["--method", "simclr", "--dataset", "digits", "--epochs", "two"], "not a whole number"),
    (["--method", "simclr", "--dataset", "digits", "--epochs", "0"], "below the minimum"),
    (["--method", "simclr", "--dataset", "digits", "--lr", "-1"], "below the minimum 0"),
    (["--method", "simclr", "--dataset", "digits", "--lr", "0"], "greater than 0"),
    (["--method", "simclr", "--dataset", "digits", "--lr", "nan"], "not a finite number"),
    (["--method", "simclr", "--dataset", "digits", "--batch-size", "100000"], "larger than the 1437 training images"),
    (["--method", "simclr", "--dataset", "digits", "--method-arg", "temprature=0.1"], "not understood"),
    (["--method", "simclr", "--dataset", "digits", "--method-arg", "oops"], "not KEY=VALUE"),
    (["--method", "simclr", "--dataset", "fashion-mnist", "--data-root", "/nonexistent"], "not found in /nonexistent"),
    (["--method", "simclr", "--dataset", "digits", "--protocols", "knnn"], "Did you mean 'knn'"),
    (["--suite", "smoke", "--epochs", "3"], "--suite fixes its own configs"),
    (["--method", "simclr"], "give --method and --dataset"),
]


@pytest.mark.parametrize("args,fragment", BAD_RUNS)
def test_bad_run_input_is_one_line_exit_2_nothing_written(cli, tmp_path, args, fragment):
    out = tmp_path / "out"
    code, stdout, err = cli("run", *args, "--out", out)
    assert code == 2
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("repbench: error: ")
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_gpu_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("run", "--method", "simclr", "--dataset", "digits", "--device", "cuda", "--out", tmp_path / "o")
    assert code == 2 and "no CUDA GPU is visible" in err
    assert not (tmp_path / "o").exists()


def test_unwritable_out_dir(cli, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = cli("run", "--method", "raw", "--dataset", "digits", "--out", f / "sub")
    assert code == 2 and "not a writable directory" in err


def test_corrupt_dataset_file(cli, tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f"{name}.gz").write_bytes(b"not gzip at all")
    code, _, err = cli("run", "--method", "raw", "--dataset", "fashion-mnist", "--data-root", root, "--out", tmp_path / "o")
    assert code == 2 and "corrupt" in err
    assert not (tmp_path / "o").exists()


def test_help_lists_commands(cli):
    with pytest.raises(SystemExit) as exc:
        cli("--help")
    assert exc.value.code == 0
