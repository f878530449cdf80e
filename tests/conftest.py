import pytest
import torch

# Test tensors are tiny: one thread is as fast, and does not spin-wait when the cores are busy.
torch.set_num_threads(1)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from bench.cli import main

    def call(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture
def refused():
    """Assert a CLI call was refused as bad input: exit 2, one line naming ``fragment``, no output, nothing written."""

    def check(result: tuple[int, str, str], fragment: str, out_dir) -> None:
        code, out, err = result
        assert "Traceback" not in err
        assert err.startswith("repbench: error: ") and err.count("\n") == 1, err
        assert fragment in err, err
        assert (code, out) == (2, "")
        assert not out_dir.exists()

    return check
