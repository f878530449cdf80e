"""An example repbench plugin: a method, a protocol and a dataset, each in its own file, registered when imported.

``repbench run --plugin tiny_plugin ...`` imports this package (with examples/plugin_method on PYTHONPATH), and so do
the ``repbench.plugins`` entry points once the package is installed (pyproject.toml beside this folder).
"""

from tiny_plugin import centroid, flipped, tiny_nce

__all__ = ["centroid", "flipped", "tiny_nce"]
