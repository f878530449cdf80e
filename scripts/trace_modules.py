"""Which first-party modules a CLI command needs: ``python scripts/trace_modules.py run --method simclr ...``

Three counts, each with its list: the static import closure of the command's module and what it names
(tests/test_layering.py reads the imports; modules reached only through a registry entry are not in it),
the modules imported while the command runs, and of those the ones whose functions ran.
"""

import inspect
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_layering  # noqa: E402

PACKAGES = test_layering.PACKAGES
called: set[str] = set()


def _module(filename: str) -> str | None:
    path = Path(filename)
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    if not rel.parts or rel.parts[0] not in PACKAGES or path.suffix != ".py":
        return None
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _profile(frame, event, arg):
    # Functions only: module and class bodies (run once on import) have no CO_OPTIMIZED flag.
    if event == "call" and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
        name = _module(frame.f_code.co_filename)
        if name:
            called.add(name)


def static_closure(start: list[str]) -> list[str]:
    graph = test_layering.edges(ROOT)
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen and m in graph:
            seen.add(m)
            todo += [d for d, _, _ in graph[m]]
    return sorted(seen)


sys.setprofile(_profile)
threading.setprofile(_profile)
from bench.cli import COMMANDS, main  # noqa: E402
from bench.data import DATASETS  # noqa: E402
from methods import METHODS  # noqa: E402
from methods.backbones import BACKBONES  # noqa: E402

code = main(sys.argv[1:])
sys.setprofile(None)
imported = sorted(m for m in sys.modules if _module(vars(sys.modules[m]).get("__file__") or ""))
# What the command reached through registries (the method, dataset and backbone it was given), imported by name.
registered = {r.module_of(n) for r in (METHODS, DATASETS, BACKBONES) for n in r.names()}
named = [COMMANDS[sys.argv[1]][0], *sorted(registered & set(imported))]
static = static_closure(["bench.cli", *named])
for title, mods in ((f"static import closure of {', '.join(named)}", static), ("imported", imported),
                    ("functions ran", sorted(called))):
    print(f"{len(mods)} {title}: {' '.join(mods)}", file=sys.stderr)
print(f"exit {code}", file=sys.stderr)
