"""The table of backbones: ``BACKBONES`` (re-exported by methods.backbones), kept apart from the networks so that
listing names imports no torch. A backbone's module is imported when it is asked for."""

from collections.abc import Callable
from typing import Any

from bench.core.registry import Registry

BACKBONES: Registry[Callable[..., Any]] = Registry("backbone", {
    "convnet": "methods.backbones:convnet",
    "resnet18": "methods.backbones:resnet18",
    "resnet50": "methods.backbones:resnet50",
    "vit": "methods.vit:vit",
})
