"""`repbench throughput --table`: the backbone presets are the architectures they are named for (FLOPs against the
published counts), FLOPs are counted forward + backward, and the table is written with its rows and provenance.

Timed rows run at toy sizes (digits, batch 16, 2 steps, eager) because this machine is a shared 2-core CPU; the
compiled rows run in the device script (scripts/gpu_check.sh) and the `slow` case here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.flops import datasheet_tflops, matmul_peak_tflops, step_flops
from bench.store import device_name
from bench.throughput_table import PRESETS, card_slug
from methods.backbones import build_backbone

# Forward multiply-adds of one 3-channel image, from the architectures' papers and model cards: ResNet-18 with the
# CIFAR stem 0.56 G (SimCLR's CIFAR set-up); ResNet-50 4.09 G (torchvision's ResNet50_Weights meta); DeiT-S (ViT-S/16)
# 4.6 G (DeiT, Table 1); ViT-Ti 192x12 on an 8x8 grid: 12 layers x (12 L d^2 + 2 L^2 d), L = 65, d = 192.
FORWARD_GMACS = {"resnet18-cifar-32": 0.56, "resnet50-224": 4.09, "vit-s16-224": 4.6,
                 "vit-tiny-32": 12 * (12 * 65 * 192**2 + 2 * 65**2 * 192) / 1e9}


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", sorted(FORWARD_GMACS))
def test_preset_is_the_named_architecture(name: str) -> None:
    preset = PRESETS[name]
    net = build_backbone(preset.backbone, 3, preset.image_size, **dict(preset.backbone_args)).train()
    x = torch.randn(1, 3, preset.image_size, preset.image_size)
    flops = step_flops(lambda: net(x))
    assert flops / 2 / 1e9 == pytest.approx(FORWARD_GMACS[name], rel=0.06)


def test_every_preset_has_a_reference_or_is_the_default_convnet() -> None:
    assert set(PRESETS) == set(FORWARD_GMACS) | {"convnet-28"}


def test_step_flops_counts_forward_and_backward() -> None:
    layer = nn.Linear(8, 4, bias=False)
    x = torch.randn(16, 8, requires_grad=True)
    # forward 2*N*I*O, backward the same again for the input's and the weight's gradients
    assert step_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 16 * 8 * 4


@pytest.mark.parametrize("card, tflops", [("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4),
                                          ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5), ("AMD EPYC", None)])
def test_datasheet_peak(card: str, tflops: float | None) -> None:
    assert datasheet_tflops(card) == tflops


def test_matmul_peak_is_positive_and_finite() -> None:
    peak = matmul_peak_tflops(torch.device("cpu"), 128, seconds=0.05)
    assert 0 < peak < 1e4


def test_table_written_with_rows_and_provenance(tmp_path: Path, cli) -> None:
    code, stdout, stderr = cli("throughput", "--table", "--dataset", "digits", "--methods", "simclr,byol", "--presets",
                               "convnet-28", "--batch-size", "16", "--steps", "2", "--warmup", "1", "--no-compile",
                               "--matmul-size", "128", "--out", tmp_path)
    assert code == 0, stderr
    slug = card_slug(device_name("cpu"))
    table = json.loads((tmp_path / f"{slug}.json").read_text())
    md = (tmp_path / f"{slug}.md").read_text()
    assert stdout == md
    assert table["card"] == device_name("cpu") and table["provenance"]["torch"] == torch.__version__
    assert table["peak"]["measured_tflops"] > 0 and table["peak"]["datasheet_bf16_tflops"] is None
    assert [(r["method"], r["preset"], r["mode"]) for r in table["rows"]] == [("simclr", "convnet-28", "eager"),
                                                                            ("byol", "convnet-28", "eager")]
    for r in table["rows"]:
        assert r["images_per_s"] > 0 and r["gflop_per_step"] > 0 and 0 <= r["data_wait_share"] <= 1
        assert r["step_ms"] == pytest.approx(1000 * 16 / r["images_per_s"], rel=0.02)  # img/s is kept to 0.1
        assert r["mfu"] == pytest.approx(r["tflops"] / table["peak"]["measured_tflops"], rel=0.01)
        assert f"| {r['method']} | convnet-28 | 28 | eager |" in md


# torch.compile of one SimCLR step took 179 s on this shared 2-core CPU: opt in with REPBENCH_SLOW_TESTS=1.
@pytest.mark.skipif(not os.environ.get("REPBENCH_SLOW_TESTS"), reason="slow: torch.compile on CPU (~3 min)")
def test_compiled_row_reports_compile_time(tmp_path: Path) -> None:
    done = run_cli("throughput", "--table", "--dataset", "digits", "--methods", "simclr", "--presets", "convnet-28",
                   "--batch-size", "16", "--steps", "2", "--warmup", "1", "--matmul-size", "128", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    assert [r["mode"] for r in rows] == ["eager", "compiled"]
    assert "error" not in rows[1], rows[1]
    assert rows[1]["compile_s"] > 0 and rows[0]["compile_s"] is None


@pytest.mark.parametrize("argv, fragment", [
    (["--table", "--methods", "simclrr"], "unknown simclrr"),
    (["--table", "--methods", "raw"], "unknown raw"),
    (["--table", "--presets", "resnet18-224"], "unknown resnet18-224"),
    (["--table", "--presets", ","], "empty list"),
    (["--table", "--method", "simclr"], "--methods/--presets"),
    (["--table", "--dataset", "nosuch"], "nosuch"),
    (["--table", "--device", "tpu"], "unknown device"),
    (["--table", "--matmul-size", "8"], "--matmul-size"),
    (["--dataset", "digits"], "give --method and --dataset"),
])
def test_bad_table_input_is_one_line(tmp_path: Path, cli, refused, argv: list[str], fragment: str) -> None:
    out = tmp_path / "out"
    refused(cli("throughput", *argv, "--out", out), fragment, out)
