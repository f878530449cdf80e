"""The pieces every page of the report shares: escaping, the page shell with its inline CSS and JS, tables.

Everything is inline (no CDN, no fonts, no server): the site opens from the file system, offline, and a copy of the
folder is the whole report. Every text that comes from a record or a file name passes through ``esc``.
"""

from __future__ import annotations

import html
import math
import re

GENERATOR = "repbench report"

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1em 1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
nav{margin-bottom:.8em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.4em 0;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 5px;text-align:left;vertical-align:top}
th{background:#f3f3f3}th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" \\2195";color:#999}
th[aria-sort=ascending]:after{content:" \\2191";color:#222}th[aria-sort=descending]:after{content:" \\2193";color:#222}
.nowrap{white-space:nowrap}.boxes{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}small,.muted{color:#777}
.flag{color:#b00}pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:10px}.charts figure{margin:0}figcaption{font-size:12px;color:#555}
input[type=search]{padding:4px 8px;width:22em;margin:.3em 0}img{max-width:100%;border:1px solid #eee}
svg text{font:11px system-ui,sans-serif;fill:#444}svg .ax{stroke:#999;fill:none}svg .ln{fill:none;stroke-width:1.6}
"""

# Sorting reads each cell's data-sort (a number or text); filtering hides rows whose text lacks every typed word.
JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function(th, col){
    th.classList.add('sortable');
    th.addEventListener('click', function(){
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row){
        var cell = row.cells[col]; var v = cell.getAttribute('data-sort');
        if (v !== null && v !== '' && !isNaN(Number(v))) return Number(v);
        return (v === null ? cell.textContent : v).trim().toLowerCase();
      }
      rows.sort(function(a, b){
        var x = key(a), y = key(b);
        var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('input[data-filter]').forEach(function(box){
  var table = document.getElementById(box.getAttribute('data-filter'));
  box.addEventListener('input', function(){
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    Array.prototype.forEach.call(table.tBodies[0].rows, function(row){
      var text = row.textContent.toLowerCase();
      row.style.display = words.every(function(w){ return text.indexOf(w) >= 0; }) ? '' : 'none';
    });
  });
});
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def slug(name: str) -> str:
    """A file-name part made of safe characters only, whatever a folder or grid was called."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def page(title: str, body: str, root: str = "") -> str:
    """A whole HTML document; ``root`` is the relative path from the page back to the site's top ("../")."""
    nav = f'<nav><a href="{root}index.html">overview</a></nav>' if root else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR}"><meta name="viewport" content="width=device-width">'
            f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head>\n'
            f"<body>{nav}<h1>{esc(title)}</h1>\n{body}\n<script>{JS}</script></body></html>\n")


def num(value: object, scale: float = 1.0, digits: int = 1) -> str:
    """A number as text, "-" for a missing or non-finite one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def cell(text: str, sort: object = None, cls: str = "") -> str:
    """One <td>; ``text`` is HTML already escaped; ``sort`` the value a click on the header sorts by."""
    attrs = f' class="{cls}"' if cls else ""
    if sort is not None:
        attrs += f' data-sort="{esc(sort)}"'
    return f"<td{attrs}>{text}</td>"


def table(headers: list[str], rows: list[str], table_id: str = "", sortable: bool = False) -> str:
    """A table from escaped header texts and rows of ``cell`` strings."""
    attrs = f' id="{esc(table_id)}"' if table_id else ""
    attrs += ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "\n".join(f"<tr>{r}</tr>" for r in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def key_values(pairs: dict[str, object]) -> str:
    """A two-column table of a flat mapping; nested values are shown as their JSON-ish text."""
    rows = [cell(esc(k)) + cell(esc(_short(v))) for k, v in pairs.items()]
    return table(["key", "value"], rows)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)
