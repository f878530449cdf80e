"""Fused SGD with momentum when a parameter's first gradient comes late (DINO's last layer and SwAV's prototypes
are frozen for the first steps): no error, and the same weights as torch's plain SGD."""

import torch

from bench.optim import build_optimizer
from methods.spec import UNIFIED_RECIPE


def _steps(opt: torch.optim.Optimizer, a: torch.nn.Parameter, b: torch.nn.Parameter) -> None:
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        loss = (a ** 2).sum() + ((b ** 3).sum() if step >= 2 else 0)  # b is frozen for two steps
        loss.backward()
        opt.step()


def test_late_gradient_trains_as_plain_sgd():
    torch.manual_seed(0)
    init = torch.randn(3), torch.randn(3)
    fused = [torch.nn.Parameter(t.clone()) for t in init]
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    model = torch.nn.Module()
    model.register_parameter("a", fused[0])
    model.register_parameter("b", fused[1])
    opt = build_optimizer(model, UNIFIED_RECIPE, 256)
    assert opt.defaults.get("fused")
    lr, wd = opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]
    _steps(opt, *fused)
    _steps(torch.optim.SGD(plain, lr=lr, momentum=UNIFIED_RECIPE.momentum, weight_decay=wd), *plain)
    for f, p in zip(fused, plain, strict=True):
        torch.testing.assert_close(f, p)
    assert not torch.equal(fused[1], init[1])  # b did train once its gradient came
