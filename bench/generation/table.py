"""The generation table: per method, mean +- 95% t-interval over seeds of each generation metric (Markdown + CSV)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.core.errors import UsageError
from bench.stats import t_halfwidth
from bench.store import atomic_write_bytes, read_json

# (column, path in generation.json, scale for the Markdown: percent or plain)
METRICS = (
    ("pixel MSE", ("reconstruction", "mse"), 1.0),
    ("decoded top-1 %", ("reconstruction", "decoded_top1"), 100.0),
    ("text-to-image top-1 %", ("text_to_image", "top1"), 100.0),
)


def read_results(run_dirs: list[Path], result_file: str) -> list[dict]:
    missing = [str(d) for d in run_dirs if not (d / result_file).is_file()]
    if missing:
        raise UsageError(f"no {result_file} in {missing[0]}; run repbench decode --run {missing[0]} first")
    return [read_json(d / result_file) for d in run_dirs]


def value(result: dict, path: tuple[str, str]) -> float:
    section = result.get(path[0])
    return float(section[path[1]]) if isinstance(section, dict) else math.nan


def table(results: list[dict]) -> pd.DataFrame:
    rows = []
    for (method, backbone), group in _groups(results).items():
        row = {"method": method, "backbone": backbone, "seeds": " ".join(str(r["seed"]) for r in group),
               "n_test": group[0]["reconstruction"]["n_test"]}
        for name, path, _ in METRICS:
            vals = [value(r, path) for r in group]
            finite = [v for v in vals if math.isfinite(v)]
            row[name] = sum(finite) / len(finite) if finite else math.nan
            row[f"{name} ci95"] = t_halfwidth(finite) if finite else math.nan
            row[f"{name} n"] = len(finite)
        rows.append(row)
    return pd.DataFrame(rows)


def _groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["method"], r["backbone"], r["seed"])):
        out.setdefault((r["method"], r["backbone"]), []).append(r)
    return out


def cell(mean: float, half: float, scale: float, n: int) -> str:
    if not math.isfinite(mean):
        return "-"
    digits = 4 if scale == 1.0 else 1
    spread = f" ± {half * scale:.{digits}f}" if math.isfinite(half) else ""
    return f"{mean * scale:.{digits}f}{spread} (n={n})"


def markdown(df: pd.DataFrame, classifier: dict) -> str:
    head = ["method", "backbone", "seeds", "test images", *(m[0] for m in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [cell(r[m], r[f"{m} ci95"], scale, int(r[f"{m} n"])) for m, _, scale in METRICS]
        lines.append(f"| {r['method']} | {r['backbone']} | {r['seeds']} | {r['n_test']} | " + " | ".join(cells) + " |")
    note = (f"\nMean ± 95% t-interval half-width over seeds (n = seeds scored). Fixed classifier: "
            f"{classifier.get('arch')} trained on {classifier.get('n_train')} real training images, "
            f"{100 * classifier.get('test_top1', math.nan):.1f}% top-1 on the {classifier.get('n_test')} real test "
            "images.\n")
    return "\n".join(lines) + "\n" + note


def write_table(run_dirs: list[Path], out: Path, result_file: str) -> pd.DataFrame:
    results = read_results(run_dirs, result_file)
    df = table(results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "table.md", markdown(df, results[0]["reconstruction"]["classifier"]).encode())
    atomic_write_bytes(out / "table.csv", df.to_csv(index=False).encode())
    return df
