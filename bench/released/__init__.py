"""Released weights in their official formats, loaded as frozen feature extractors (``repbench eval``)."""

from bench.released.archs import ARCHS
from bench.released.formats import FORMATS
from bench.released.load import Loaded, load_released

__all__ = ["ARCHS", "FORMATS", "Loaded", "load_released"]
