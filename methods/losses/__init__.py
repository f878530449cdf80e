"""Losses as pure functions of one process's tensors; gathering across ranks is the caller's job.

Shape letters in the docstrings: N batch, V views, D features, K queue/prototypes, C classes.
Each submodule lists its public losses in ``__all__``; they are all re-exported here, so
``from methods.losses import nt_xent_loss`` is the stable import path.
"""

import importlib
import pkgutil

__all__: list[str] = []
for _mod in pkgutil.iter_modules(__path__):
    _m = importlib.import_module(f"{__name__}.{_mod.name}")
    for _name in getattr(_m, "__all__", ()):
        globals()[_name] = getattr(_m, _name)
        __all__.append(_name)
