"""Small inline SVG charts: a training curve per signal and the accuracy-vs-throughput scatter.

Inline SVG keeps each chart a few hundred bytes of text inside its page (56 runs x 5 curves as PNGs would be
megabytes) and stays sharp when zoomed; points of the scatter are links to their run pages.
"""

from __future__ import annotations

import math

from bench.site.html import esc

# matplotlib's tab20 order: distinct colours for up to 20 methods, then they repeat.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _scale(lo: float, hi: float, a: float, b: float, log: bool = False):
    """Map [lo, hi] onto pixel range [a, b] (log10 when ``log``); a flat range maps to the middle."""
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo
    def to_px(v: float) -> float:
        v = math.log10(v) if log else v
        return (a + b) / 2 if span == 0 else a + (v - lo) / span * (b - a)
    return to_px


def line_chart(xs: list[float], ys: list[float], title: str, xlabel: str, width: int = 270, height: int = 150) -> str:
    """One series as a polyline with its min/max on the axes; points where y is missing are skipped."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if not pts:
        return ""
    left, right, top, bottom = 58, width - 8, 8, height - 28  # room for "0.000125"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    fx, fy = _scale(x0, x1, left, right), _scale(y0, y1, bottom, top)
    line = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="2" fill="#1f77b4"/>' for x, y in pts) if len(pts) < 30 else ""
    return (f'<figure><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
            f'<path class="ax" d="M{left},{top}V{bottom}H{right}"/>'
            f'<polyline class="ln" stroke="#1f77b4" points="{line}"/>{dots}'
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_fmt(y1)}</text>'
            f'<text x="{left - 4}" y="{bottom}" text-anchor="end">{_fmt(y0)}</text>'
            f'<text x="{left}" y="{bottom + 13}">{_fmt(x0)}</text>'
            f'<text x="{right}" y="{bottom + 13}" text-anchor="end">{_fmt(x1)}</text>'
            f'<text x="{(left + right) / 2:.0f}" y="{height - 3}" text-anchor="middle">{esc(xlabel)}</text>'
            f"</svg><figcaption>{esc(title)}</figcaption></figure>")


def scatter(points: list[dict], xlabel: str, ylabel: str, width: int = 760, height: int = 420) -> str:
    """Points {x, y, group, label, href}: one colour per group (legend on the right), each point a link.

    The x axis is logarithmic when the values span more than a factor of 20 (throughput does: raw pixels are
    free, a ViT is not)."""
    pts = [p for p in points if all(isinstance(p[k], (int, float)) and math.isfinite(p[k]) for k in ("x", "y")) and p["x"] > 0]
    if not pts:
        return '<p class="muted">no run has both a score and a throughput.</p>'
    groups = list(dict.fromkeys(p["group"] for p in pts))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    left, right, top, bottom = 56, width - 170, 10, height - 40
    x0, x1 = min(p["x"] for p in pts), max(p["x"] for p in pts)
    y0, y1 = min(p["y"] for p in pts), max(p["y"] for p in pts)
    log = x1 / x0 > 20
    pad = (y1 - y0) * 0.05 or 1.0
    fx, fy = _scale(x0, x1, left + 8, right - 8, log), _scale(y0 - pad, y1 + pad, bottom, top)
    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="{esc(ylabel)} against {esc(xlabel)}">',
           f'<path class="ax" d="M{left},{top}V{bottom}H{right}"/>']
    for v in _ticks(y0 - pad, y1 + pad):
        out.append(f'<text x="{left - 5}" y="{fy(v) + 4:.1f}" text-anchor="end">{v:.6g}</text>'
                   f'<path class="ax" stroke-dasharray="2,3" d="M{left},{fy(v):.1f}H{right}"/>')
    for v in (_log_ticks(x0, x1) if log else _ticks(x0, x1)):
        out.append(f'<text x="{fx(v):.1f}" y="{bottom + 14}" text-anchor="middle">{v:.6g}</text>')
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}'
               f'{" (log scale)" if log else ""}</text>'
               f'<text transform="translate(13,{(top + bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    for p in pts:
        out.append(f'<a href="{esc(p["href"])}"><circle cx="{fx(p["x"]):.1f}" cy="{fy(p["y"]):.1f}" r="4.5" '
                   f'fill="{colour[p["group"]]}" fill-opacity="0.8"><title>{esc(p["label"])}</title></circle></a>')
    for i, g in enumerate(groups):
        y = top + 6 + i * 15
        out.append(f'<circle cx="{right + 16}" cy="{y}" r="4.5" fill="{colour[g]}"/>'
                   f'<text x="{right + 26}" y="{y + 4}">{esc(g)}</text>')
    return "".join(out) + "</svg>"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= n)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)
            if lo <= m * 10 ** e <= hi]
