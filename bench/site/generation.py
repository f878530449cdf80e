"""The generation protocol in the site (``repbench decode`` writes generation.json beside a run): a section on the
run's page and a table across runs on the index."""

from __future__ import annotations

import json
from pathlib import Path

from bench.generation.pipeline import RESULT_FILE
from bench.records import is_number
from bench.site.html import cell, esc, key_values, num, table

# (label, path into generation.json): the index table's metric columns; the run page shows these and more, as
# generation.json has them (top-1 as a fraction).
COLUMNS = (("pixel MSE", ("reconstruction", "mse")), ("decoded top-1", ("reconstruction", "decoded_top1")),
           ("text-to-image top-1", ("text_to_image", "top1")))
PERCENT = {"decoded top-1", "text-to-image top-1"}  # shown in % on the index, like its other top-1 columns
DETAILS = (("fixed classifier on the real held-out images, top-1", ("reconstruction", "real_top1")),
           ("fixed classifier's own test top-1", ("reconstruction", "classifier", "test_top1")),
           ("held-out test images", ("reconstruction", "n_test")),
           ("decoder", ("reconstruction", "decoder", "arch")), ("decoder epochs", ("reconstruction", "decoder", "epochs")),
           ("text-to-image chance", ("text_to_image", "chance")),
           ("samples per prompt", ("text_to_image", "samples_per_prompt")),
           *((f"compositional {split} pairs: {k}", ("compositional", split, k))
             for split in ("held_out", "seen") for k in ("shape", "colour", "both")),
           ("decode time s", ("train_s",)))


def read_result(folder: Path) -> tuple[dict | None, str]:
    """(generation.json's content or None, a note when it is there but cannot be read)."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None, ""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{RESULT_FILE} unreadable ({err}); rerun repbench decode --run {folder}"
    if not isinstance(result, dict):
        return None, f"{RESULT_FILE} is not a JSON object; rerun repbench decode --run {folder}"
    return result, ""


def field(result: dict, keys: tuple[str, ...]) -> object:
    """The value at ``keys`` inside nested mappings; None where a level is missing or not a mapping."""
    value: object = result
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def section(result: dict | None, png: str, note: str) -> str:
    """The run page's "Generation" section body (empty when the run has no generation.json and no note)."""
    if result is None:
        return f'<p class="muted">{esc(note)}</p>' if note else ""
    shown = {label: field(result, keys) for label, keys in COLUMNS + DETAILS}
    parts = [f"<p>from <code>{esc(RESULT_FILE)}</code> (repbench decode): test images decoded from this run's "
             "embedding, scored by a fixed classifier trained on real images.</p>",
             key_values({k: v for k, v in shown.items() if v is not None})]
    if png:
        parts.append(f'<img src="../{esc(png)}" alt="generation">')
    elif note:
        parts.append(f'<p class="muted">{esc(note)}</p>')
    return "\n".join(parts)


def index_table(rows: list[tuple[str, dict]]) -> str:
    """``rows``: (run page, generation.json) of every run that has one."""
    body = []
    for page, result in rows:
        vals = [(field(result, keys), 100 if label in PERCENT else 1) for label, keys in COLUMNS]
        body.append(cell(f'<a href="{esc(page)}">{esc(result.get("method", "-"))}</a>') + cell(esc(result.get("backbone", "-")))
                    + cell(esc(result.get("seed", "-")), result.get("seed"), "num")
                    + "".join(cell(num(v, scale, 1 if scale != 1 else 4), v if is_number(v) else None, "num")
                              for v, scale in vals))
    headers = [label + (" %" if label in PERCENT else "") for label, _ in COLUMNS]
    return table(["method", "backbone", "seed", *headers], body, "generation", sortable=True)
