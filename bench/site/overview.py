"""The index page: method x protocol table (mean, 95% t-interval, n scored / n run; sortable and filterable), the
accuracy-vs-throughput scatter, links to the ablation and search pages and to every run."""

from __future__ import annotations

import math

import pandas as pd

from bench.report import GROUP, ci95, flatten
from bench.site import generation
from bench.site.html import cell, esc, num, page, table
from bench.site.runs import Run
from bench.site.svg import scatter

# (header, record metric KEY.FIELD, scale): the protocols of the overview; a column no run has is left out.
PROTOCOLS = (("kNN %", "knn.top1", 100), ("linear %", "linear.top1", 100), ("NMI %", "kmeans.nmi", 100),
             ("1% labels %", "fewshot_1pct.top1", 100), ("10-shot %", "fewshot_10shot.top1", 100),
             ("zero-shot %", "zero-shot.top1", 100), ("recon. MSE", "reconstruction.mse", 1))
LEGEND = ("kNN: k-NN top-1 (k=20, cosine); linear: linear-probe top-1; NMI: K-Means NMI; 1% labels, 10-shot: few-shot "
          "linear top-1; zero-shot: text-prompt top-1; recon. MSE: reconstruction error (normalised pixels, lower is better)")
SCATTER_Y = "knn.top1"


def frame(runs: list[Run]) -> pd.DataFrame:
    df = flatten([r.record for r in runs], tuple(p[1] for p in PROTOCOLS))
    df["page"] = [r.page for r in runs]
    return df


def _group_cols(df: pd.DataFrame) -> list[str]:
    """The grouping columns that tell rows apart here (method always); the others are the same on every row."""
    return [k for k in GROUP if k == "method" or df[k].astype(str).nunique() > 1]


def overview_table(df: pd.DataFrame) -> str:
    shown = _group_cols(df)
    protocols = [p for p in PROTOCOLS if p[1] in df and df[p[1]].notna().any()]
    rows = []
    for keys, g in df.groupby(GROUP, sort=True, dropna=False):
        label = dict(zip(GROUP, keys, strict=True))
        cells = [cell(esc(label[k]).replace(",", ", ")) for k in shown]  # a long variant wraps at its commas
        for _, col, scale in protocols:
            vals = pd.to_numeric(g[col], errors="coerce")
            mean, half, n = vals.mean(), ci95(vals), int(vals.notna().sum())
            text = num(mean, scale, 1 if scale != 1 else 4)
            text += f" ± {num(half, scale, 1 if scale != 1 else 4)}" if not math.isnan(half) else ""
            scored = f" <small>{n}/{len(g)}</small>" if n else ""  # a protocol that never applies says just "-"
            cells.append(cell(esc(text) + scored, None if math.isnan(mean) else round(mean * scale, 6), "num"))
        train_s = pd.to_numeric(g["train_s"], errors="coerce").mean()
        speed = pd.to_numeric(g["img_per_s"], errors="coerce").mean()
        cells.append(cell(num(train_s), None if math.isnan(train_s) else round(train_s, 3), "num"))
        cells.append(cell(num(speed, 1, 0), None if math.isnan(speed) else round(speed, 1), "num"))
        bad = g[g["status"] != "ok"]["flag"]
        cells.append(cell(esc(", ".join(f"{n}x {s}" for s, n in bad.value_counts().items())), cls="flag"))
        links = " ".join(f'<a href="{esc(p)}">s{esc(s)}</a>' for p, s in zip(g["page"], g["seed"], strict=True))
        cells.append(cell(links, cls="nowrap"))
        rows.append("".join(cells))
    headers = shown + [p[0] for p in protocols] + ["train s", "img/s", "flags", "runs"]
    return table(headers, rows, "overview", sortable=True)


def scatter_svg(df: pd.DataFrame) -> str:
    if SCATTER_Y not in df:
        return '<p class="muted">no run has a kNN score.</p>'
    points = [{"x": x, "y": 100 * y if isinstance(y, (int, float)) else None, "group": m, "href": p,
               "label": f"{m} seed {s}: kNN {100 * y:.1f} %, {x:.0f} img/s" if _finite(x, y) else m}
              for x, y, m, s, p in zip(df["img_per_s"], df[SCATTER_Y], df["method"], df["seed"], df["page"], strict=True)]
    points = [p for p in points if _finite(p["x"], p["y"])]
    return scatter(points, "training throughput (images/s)", "kNN top-1 %")


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def runs_table(df: pd.DataFrame) -> str:
    rows = []
    for r in df.to_dict("records"):
        knn = r.get(SCATTER_Y)
        knn = knn if _finite(knn) else None
        rows.append(cell(f'<a href="{esc(r["page"])}">{esc(r["method"])}</a>') + cell(esc(r["suite"]))
                    + cell(esc(r["dataset"])) + cell(esc(r["backbone"])) + cell(esc(r["variant"]))
                    + cell(esc(r["seed"]), r["seed"], "num") + cell(esc(r["flag"]), cls="" if r["status"] == "ok" else "flag")
                    + cell(num(knn, 100), knn, "num"))
    return table(["method", "suite", "dataset", "backbone", "variant", "seed", "status", "kNN top-1 %"], rows, "runs",
                 sortable=True)


def index_page(runs: list[Run], source: str, extra: list[tuple[str, str]]) -> str:
    """``extra``: (title, page path) of the ablation and search pages."""
    df = frame(runs)
    common = {k: df[k].iloc[0] for k in GROUP if k not in _group_cols(df) and df[k].iloc[0] != "-"}
    setting = ", ".join(f"{k} {v}" for k, v in common.items())
    body = [f"<p>{len(df)} run(s) from <code>{esc(source)}</code>; {esc(setting)}. Cells: mean ± half-width of the "
            "95% Student-t interval over seeds, then n scored / n run. Click a header to sort; type to filter.</p>",
            f'<p class="muted">{esc(LEGEND)}.</p>',
            '<input type="search" data-filter="overview" placeholder="filter rows, e.g. moco" aria-label="filter rows">',
            overview_table(df), "<h2>Accuracy against throughput</h2>",
            "<p>One point per run; click a point for its page.</p>", scatter_svg(df)]
    gen = [(r.page, r.generation) for r in runs if r.generation is not None]
    if gen:
        body += ["<h2>Generation</h2>", "<p>Test images decoded from each run's embedding (repbench decode); top-1 of a "
                 "fixed classifier trained on real images.</p>", generation.index_table(gen)]
    if extra:
        items = "".join(f'<li><a href="{esc(p)}">{esc(t)}</a></li>' for t, p in extra)
        body.append(f"<h2>Ablations and searches</h2><ul>{items}</ul>")
    body += ["<h2>Runs</h2>", '<input type="search" data-filter="runs" placeholder="filter runs" aria-label="filter runs">',
             runs_table(df)]
    return page("repbench report", "\n".join(body))
