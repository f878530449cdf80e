"""Methods, datasets and protocols from outside the package: a plugin is a module that registers them in the
usual registries when imported (``METHODS.register("name")(cls)``, ``DATASETS.register(...)``, ``PROTOCOLS...``).

Plugins are the modules given with ``--plugin`` and the entry points of the ``repbench.plugins`` group (an
installed package declares ``[project.entry-points."repbench.plugins"] name = "my_pkg.my_method"``). The modules
named are kept in ``$REPBENCH_PLUGINS``, so worker processes (--jobs, spawned) load the same plugins the first
time a registry misses a name.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from bench.core.errors import UsageError

ENV = "REPBENCH_PLUGINS"
GROUP = "repbench.plugins"
_loaded: set[str] = set()


def load(modules: list[str] | None = None) -> list[str]:
    """Import the named plugin modules, those of ``$REPBENCH_PLUGINS`` and the entry points of the group, each once;
    returns the modules imported now. A module that fails to import, or registers a taken name, is one clear line."""
    named = [*(modules or ()), *filter(None, os.environ.get(ENV, "").split(","))]
    fresh = []
    for name in dict.fromkeys(named):
        if name not in _loaded:
            _loaded.add(name)
            _run(name, lambda n=name: importlib.import_module(n), f"--plugin {name}")
            fresh.append(name)
    for ep in metadata.entry_points(group=GROUP):
        if f"entry point {ep.name}" not in _loaded:
            _loaded.add(f"entry point {ep.name}")
            _run(ep.value, ep.load, f"entry point {ep.name} = {ep.value!r} of group {GROUP}")
            fresh.append(ep.value)
    if named:
        os.environ[ENV] = ",".join(dict.fromkeys(named))
    return fresh


def _run(name: str, load_it, where: str) -> None:
    try:
        load_it()
    except UsageError as err:  # a registry's own refusal, such as a name already taken
        raise UsageError(f"plugin {name} ({where}): {err}") from None
    except Exception as err:  # noqa: BLE001 - a user's module may raise anything while it is imported
        hint = "check the module name and that it is importable (installed, or its folder on PYTHONPATH)" \
            if isinstance(err, ModuleNotFoundError) and err.name and name.startswith(err.name) else "fix the plugin"
        said = " ".join(str(err).split())  # one line, whatever the module raised
        raise UsageError(f"plugin {name} ({where}) failed to import: {type(err).__name__}: {said}; {hint}") from None
