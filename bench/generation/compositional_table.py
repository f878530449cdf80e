"""The compositional table over seeds: shape, colour and both-correct rates per held-out pair, held-out and seen pairs
overall, the scorers on real held-out images, and chance; mean +- 95% t-interval over the runs (Markdown + CSV)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.generation.table import cell
from bench.stats import t_halfwidth
from bench.store import atomic_write_bytes

TABLE_MD, TABLE_CSV = "compositional-table.md", "compositional.csv"
SCORES = ("shape", "colour", "both")


def rows_of(comp: dict) -> dict[str, dict]:
    """One generation.json's "compositional" section as table rows: label -> {shape, colour, both}."""
    rows = {f"held-out: {name}": s for name, s in comp["held_out"]["per_pair"].items()}
    rows[f"held-out pairs (mean of {comp['held_out']['pairs']})"] = comp["held_out"]
    rows[f"seen pairs (mean of {comp['seen']['pairs']}, reference)"] = comp["seen"]
    rows["real held-out test images (scorers' ceiling)"] = comp["real_held_out"]
    rows["chance (prompt-blind generator)"] = comp["chance"]
    return rows


def table(results: list[dict]) -> pd.DataFrame:
    per_run = [rows_of(r["compositional"]) for r in results]
    out = []
    for label in per_run[0]:
        row = {"row": label, "seeds": " ".join(str(r["seed"]) for r in results)}
        for k in SCORES:
            vals = [rows[label][k] for rows in per_run]
            row |= {k: sum(vals) / len(vals), f"{k} ci95": t_halfwidth(vals) if len(vals) > 1 else math.nan,
                    f"{k} n": len(vals)}
        out.append(row)
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame, first: dict) -> str:
    comp = first["compositional"]
    lines = ["| pairs | seeds | shape % | colour % | both % |", "|---|---|---|---|---|"]
    for _, r in df.iterrows():
        cells = [cell(r[k], r[f"{k} ci95"], 100.0, int(r[f"{k} n"])) for k in SCORES]
        lines.append(f"| {r['row']} | {r['seeds']} | " + " | ".join(cells) + " |")
    clf = comp["classifier"]
    note = (f"\nMean ± 95% t-interval half-width over runs (n = runs). {comp['samples_per_prompt']} samples a prompt "
            f"(\"{comp['prompt_template']}\"). Shape: {clf.get('arch')}, {100 * clf.get('test_top1', math.nan):.1f}% "
            f"on the {clf.get('n_test')} real held-out test images. Colour: {comp['colour_rule']}.\n")
    return "\n".join(lines) + "\n" + note


def write_compositional_table(results: list[dict], out: Path) -> list[Path]:
    """Writes the table over the results that have a "compositional" section (CLIP runs on shapes), if any."""
    comp = sorted((r for r in results if "compositional" in r), key=lambda r: r["seed"])
    if not comp:
        return []
    df = table(comp)
    atomic_write_bytes(out / TABLE_MD, markdown(df, comp[0]).encode())
    atomic_write_bytes(out / TABLE_CSV, df.to_csv(index=False).encode())
    return [out / TABLE_MD, out / TABLE_CSV]
