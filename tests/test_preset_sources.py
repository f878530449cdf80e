"""Every preset's fields checked against the data file of its source's published settings (bench/presets/sources/*.toml).

A sources entry gives, per preset, the source's learning rate and how it scales with batch, the settings the source
states (dotted preset keys -> value) and the keys it leaves unstated (key -> why repbench's value stands)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench import presets

NAMES = presets.names()
SOURCE_FILES = sorted((presets.PRESET_DIR / "sources").glob("*.toml"))
TABLES = ("backbone_args", "recipe", "method_args")
# recipe.lr is checked as the effective rate against the entry's lr rule, not as a setting.
BY_RULE = ("recipe.lr",)


def load_entries(files: list[Path]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every sources entry by preset name, and the names given more than once (with their files)."""
    entries: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    repeated = []
    for path in files:
        with open(path, "rb") as f:
            for name, entry in tomllib.load(f).get("presets", {}).items():
                if name in entries:
                    repeated.append(f"{name} ({where[name]}, {path.name})")
                entries[name], where[name] = entry, path.name
    return entries, repeated


ENTRIES, REPEATED = load_entries(SOURCE_FILES)


def flat(data: dict[str, Any]) -> dict[str, Any]:
    """A preset's fields as dotted keys (``epochs``, ``recipe.lr``, ``protocol_args.knn.variants``), published aside."""
    out = {k: v for k, v in data.items() if k not in (*TABLES, "published", "protocol_args")}
    for table in TABLES:
        out.update({f"{table}.{k}": v for k, v in data[table].items()})
    for protocol, settings in data.get("protocol_args", {}).items():
        out.update({f"protocol_args.{protocol}.{k}": v for k, v in settings.items()})
    return out


def same(a: Any, b: Any) -> bool:
    """Equal as data: floats within rel 1e-9, lists element by element, booleans never equal to numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def source_rate(lr: dict[str, Any], batch_size: int) -> float:
    """The source's rate at ``batch_size``: linear (value x batch / per_batch) or fixed (value)."""
    if lr["rule"] == "linear":
        return lr["value"] * batch_size / lr["per_batch"]
    assert lr["rule"] == "fixed", f"unknown lr rule {lr['rule']!r}; give linear or fixed"
    return lr["value"]


def problems(data: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """What differs between a preset and its sources entry; empty when every field is accounted for and equal."""
    fields, settings, unstated = flat(data), entry.get("settings", {}), entry.get("unstated", {})
    # The published number and metric are checked where an entry gives them; they are not preset settings.
    fields.update({k: data["published"][k.partition(".")[2]] for k in settings
                   if k.startswith("published.") and k.partition(".")[2] in data["published"]})
    found = [f"{k}: preset {fields[k]!r}, source {v!r}" for k, v in settings.items() if k in fields and not same(fields[k], v)]
    found += [f"{k}: in the sources entry, not in the preset" for k in [*settings, *unstated] if k not in fields]
    found += [f"{k}: both stated and unstated" for k in set(settings) & set(unstated)]
    found += [f"{k}: no source entry (add it to settings, or to unstated with the reason)"
              for k in fields if k not in settings and k not in unstated and k not in BY_RULE]
    found += [f"{k}: unstated without a reason" for k, why in unstated.items() if not (isinstance(why, str) and why.strip())]
    rate, expected = data["recipe"]["lr"] * data["batch_size"] / 256, source_rate(entry["lr"], data["batch_size"])
    if not math.isclose(rate, expected, rel_tol=1e-9):
        found.append(f"effective lr {rate} at batch {data['batch_size']}, source's {expected}")
    if not str(entry.get("source", "")).strip():
        found.append("no source")
    return found


def test_sources_files_are_shipped():
    assert {"lightly.toml", "solo-learn.toml"} <= {p.name for p in SOURCE_FILES}


def test_each_preset_has_exactly_one_sources_entry():
    assert REPEATED == [], "a preset has entries in more than one place"
    assert sorted(set(NAMES) - set(ENTRIES)) == [], "presets without a sources entry"
    assert sorted(set(ENTRIES) - set(NAMES)) == [], "sources entries naming no preset"


@pytest.mark.parametrize("name", NAMES)
def test_preset_matches_its_published_settings(name):
    assert name in ENTRIES, f"{name} has no entry in bench/presets/sources/*.toml"
    assert problems(presets.read(presets.path_of(name)), ENTRIES[name]) == []


def _solo_simclr() -> tuple[dict[str, Any], dict[str, Any]]:
    name = "solo-cifar10-simclr"
    return presets.read(presets.path_of(name)), ENTRIES[name]


@pytest.mark.parametrize("change,words", [
    (lambda d, e: d["method_args"].update(temperature=0.5), "method_args.temperature: preset 0.5"),
    (lambda d, e: d["recipe"].update(decay_norm_bias=1), "recipe.decay_norm_bias"),
    (lambda d, e: d["method_args"].update(extra=1), "method_args.extra: no source entry"),
    (lambda d, e: e["settings"].pop("epochs"), "epochs: no source entry"),
    (lambda d, e: d["recipe"].update(lr=0.41), "effective lr"),
    (lambda d, e: d.update(batch_size=512), "batch_size: preset 512"),
    (lambda d, e: d["published"].update(value=0.5), "published.value: preset 0.5"),
    (lambda d, e: e["unstated"].update({"recipe.nope": "x"}), "recipe.nope: in the sources entry"),
    (lambda d, e: e["unstated"].update({"epochs": "x"}), "epochs: both"),
    (lambda d, e: e["unstated"].update({"recipe.betas": " "}), "unstated without a reason"),
])
def test_a_difference_is_named(change, words):
    data, entry = _solo_simclr()
    entry = {**entry, "settings": dict(entry["settings"]), "unstated": dict(entry["unstated"])}
    assert problems(data, entry) == []
    change(data, entry)
    assert any(words in p for p in problems(data, entry)), problems(data, entry)


def test_rules_scale_as_documented():
    assert source_rate({"value": 0.06, "rule": "linear", "per_batch": 128}, 512) == pytest.approx(0.24)
    assert source_rate({"value": 0.06, "rule": "fixed"}, 512) == 0.06
    assert same([[1, "a"]], [[1.0, "a"]]) and not same(True, 1) and not same(0.1, 0.1000001)


def test_load_entries_names_a_repeated_preset(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[presets."x"]\nsource = "s"\n')
    b.write_text('[presets."x"]\nsource = "t"\n')
    assert load_entries([a, b])[1] == ["x (a.toml, b.toml)"]
