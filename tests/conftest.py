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
