"""Projection / prediction heads shared by the methods, and the base of methods that train through one."""

from __future__ import annotations

import torch
from torch import nn

from methods.base import Method


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = True,
        last_bn: bool = False) -> nn.Sequential:
    """``layers`` linear layers with BN+ReLU between them (SimCLR/MoCo v2/BYOL style heads).

    ``layers=1`` is a linear head (MoCo v1); ``last_bn`` adds an affine-free BN at the output
    (SimSiam, MoCo v3).
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.ReLU(inplace=True))
        d = hidden_dim
    mods.append(nn.Linear(d, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class Projected(Method):
    """A method with a projection head on its backbone (``projector``): the head's output is what its loss sees,
    and what the collapse watchdog watches. The head is dropped at evaluation, as in the papers."""

    projector: nn.Module

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))
