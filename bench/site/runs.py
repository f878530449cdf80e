"""One page per run: headline metrics, training curves (the per-step steps.csv when the run wrote one, else the
per-epoch history of record.json), collapse statistics, throughput, reconstructions, provenance and config."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from bench.site import generation
from bench.site.html import cell, esc, key_values, num, page, table
from bench.site.svg import line_chart

STEPS_CSV = "steps.csv"
# The fields of a metric entry worth a column, in this order; the rest stay in the run's record.json (a dump of
# them all would double the committed site's size).
HEADLINE = ("top1", "top5", "nmi", "ari", "acc", "mse", "last", "best")
AXES = ("step", "epoch")


@dataclass
class Run:
    folder: Path  # the run's folder (holds record.json, maybe steps.csv and checkpoint.pt)
    record: dict
    page: str  # the page's path inside the site, "runs/<name>.html"
    reconstruction: str = ""  # the picture's path inside the site, when one was drawn
    note: str = ""  # why there is no picture, when a decoder run has none
    generation: dict | None = None  # its generation.json (repbench decode), when it has one
    generation_png: str = ""  # the generation picture's path inside the site, when one was drawn
    generation_note: str = ""  # why there is no generation picture (or no readable generation.json)

    @property
    def title(self) -> str:
        c = self.record["config"]
        return f"{c['method']} / {c['dataset']} / {c['backbone']} / seed {c['seed']}"


def curves(run: Run) -> tuple[str, dict[str, list[float]], str]:
    """(x axis name, series by name, note): steps.csv's columns when it is there and readable, else the history."""
    path = run.folder / STEPS_CSV
    if path.is_file():
        try:
            series = _read_steps(path)
            if series.get("step"):
                return "step", series, f"per-step log ({STEPS_CSV})"
            problem = "no step column"
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            problem = str(err)
        note = f"{STEPS_CSV} unreadable ({problem}); curves from the per-epoch history"
    else:
        note = "per-epoch history of record.json"
    training = run.record.get("training")
    history = training.get("history") if isinstance(training, dict) else None
    rows = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    keys = list(dict.fromkeys(k for h in rows for k in h))
    return "epoch", {k: [_number(h.get(k)) for h in rows] for k in keys}, note


def _read_steps(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = list(rows[0]) if rows else []
    return {k: [_number(r.get(k)) for r in rows] for k in keys if k is not None}


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def charts(run: Run) -> str:
    axis, series, note = curves(run)
    xs = series.get(axis) or []
    figs = [line_chart([x for x in xs], ys, name, axis) for name, ys in series.items()
            if name not in AXES and any(y is not None for y in ys) and all(x is not None for x in xs)]
    figs = [f for f in figs if f]
    status = run.record.get("status", "ok")
    none = (f"no training curve recorded: the run stopped ({status}) before its first epoch ended" if status != "ok"
            else "no training curve recorded: this method does not train (a floor)")
    body = "".join(figs) or f'<p class="muted">{esc(none)}.</p>'
    return f'<p class="muted">{esc(note)}</p><div class="charts">{body}</div>'


def collapse_table(run: Run) -> str:
    """The last recorded value of each collapse signal (every history key that is not loss, lr or an axis) and the
    watchdog's verdict."""
    training = run.record.get("training") if isinstance(run.record.get("training"), dict) else {}
    history = [h for h in training.get("history") or [] if isinstance(h, dict)]
    last = history[-1] if history else {}
    signals = {k: v for k, v in last.items() if k not in AXES + ("loss", "lr")}
    detail = training.get("status_detail") if isinstance(training.get("status_detail"), dict) else {}
    verdict = {"status": run.record.get("status", "ok"), **{f"watchdog {k}": v for k, v in detail.items()}}
    where = f" at epoch {last['epoch']}" if "epoch" in last else ""
    return f"<p>last recorded values{esc(where)}, and the watchdog's verdict:</p>{key_values({**signals, **verdict})}"


def metrics_table(record: dict) -> str:
    metrics = record.get("metrics") or {}
    fields = [f for f in HEADLINE if any(isinstance(e, dict) and f in e for e in metrics.values())]
    rows = []
    for key, entry in metrics.items():
        vals = [entry.get(f) if isinstance(entry, dict) else None for f in fields]
        rows.append(cell(esc(key)) + "".join(cell(num(v, 1, 4), v if isinstance(v, (int, float)) else None, "num")
                                             for v in vals))
    return table(["metric", *fields], rows, "metrics", sortable=True) if rows else '<p class="muted">no metric.</p>'


def _section(title: str, body: str) -> str:
    return f"<h2>{esc(title)}</h2>\n{body}"


def run_page(run: Run) -> str:
    rec = run.record
    c = rec["config"]
    status = rec.get("status", "ok")
    head = (f"<p>suite <b>{esc(c['suite'])}</b>, {esc(c.get('epochs'))} epoch(s), batch {esc(c.get('batch_size', '-'))}, "
            f"recipe {esc(c.get('recipe_name', '-'))}, status <span class=\"{'' if status == 'ok' else 'flag'}\">"
            f"{esc(status)}</span>; folder <code>{esc(run.folder.name)}</code></p>")
    timing = rec.get("timing") if isinstance(rec.get("timing"), dict) else {}
    throughput = rec.get("throughput") if isinstance(rec.get("throughput"), dict) else {}
    prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
    boxes = [_section("Collapse statistics", collapse_table(run)),
             _section("Throughput and timing", key_values({**throughput, **timing})),
             _section("Provenance", key_values(prov) if prov else '<p class="muted">not recorded.</p>')]
    parts = [head, _section("Training curves", charts(run)), '<div class="boxes">' + "".join(f"<div>{b}</div>" for b in boxes)
             + "</div>"]
    if run.reconstruction:
        parts.append(_section("Reconstructions", f'<img src="../{esc(run.reconstruction)}" alt="reconstructions">'))
    elif run.note:
        parts.append(_section("Reconstructions", f'<p class="muted">{esc(run.note)}</p>'))
    if run.generation is not None or run.generation_note:
        parts.append(_section("Generation", generation.section(run.generation, run.generation_png, run.generation_note)))
    parts.append(_section("Metrics", metrics_table(rec)))
    config = {"config": c, "method_config": rec.get("method_config"), "data": rec.get("data")}
    parts.append(_section("Config", f"<pre>{esc(json.dumps(config, indent=2))}</pre>"))
    parts.append(f'<p class="muted">every field of every metric: <code>{esc(run.folder.name)}/record.json</code></p>')
    return page(run.title, "\n".join(parts), root="../")
