"""The names of the published tables (``bench/presets/tables/NAME.toml``), read without importing what runs them
(bench.reproduce imports torch and pandas), so that ``repbench list tables`` starts at once."""

from __future__ import annotations

from pathlib import Path

from bench.presets import PRESET_DIR

TABLE_DIR = PRESET_DIR / "tables"


def table_names(folder: Path = TABLE_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))
