"""HTML building blocks for one self-contained report page: escaping, tables, inline figures, the page.

Why this shape: the report is opened from disk by people who did not write it, so it must not reach
the network (a Content-Security-Policy forbids every fetch; images are ``data:`` PNGs), and any string
that came from a user (model names, file paths, the command line) must show as text. Every helper
here escapes by default with ``html.escape``; only ``Raw`` fragments built by these helpers pass
through unescaped.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Iterable, Sequence

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
"""No fetch of any kind can leave the file: only inline styles, inline scripts and data: images."""

GiB = 1024**3

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:0 24px 48px;color:#1d232b;line-height:1.45;background:#fff}
h1{font-size:1.6em;margin:24px 0 4px}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:36px}
h3{margin:20px 0 6px}.sub{color:#5a6675;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.92em}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f6f9}td.l,th.l{text-align:left}tr.chosen td{background:#eef7ee;font-weight:600}
.kpi{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.kpi div{border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;min-width:150px}
.kpi b{display:block;font-size:1.35em}.kpi span{color:#5a6675;font-size:0.85em}
.plan{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.05em;background:#f3f6f9;
padding:8px 12px;border-radius:6px;overflow-wrap:anywhere}
pre{background:#f6f8fa;border:1px solid #dde3ea;border-radius:6px;padding:10px;overflow-x:auto;
white-space:pre-wrap;overflow-wrap:anywhere;font-size:0.88em}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #eef1f4}
figcaption{color:#5a6675;font-size:0.9em}.warn{color:#a33}.ok{color:#2a7a2a}
nav a{margin-right:14px;color:#2456a6;text-decoration:none}
summary{cursor:pointer;color:#2456a6;margin:8px 0}
"""


class Raw(str):
    """An HTML fragment produced by these helpers: passes through ``cell`` unescaped."""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def cell(value: object) -> str:
    return value if isinstance(value, Raw) else esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, left_cols: int = 1,
          text_cols: Sequence[int] = (), highlight_row: int | None = None) -> Raw:
    """A table; the first ``left_cols`` columns and those in ``text_cols`` are left-aligned (names, reasons),
    the rest right-aligned (numbers)."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left_cols or i in text_cols or i - len(headers) in text_cols else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        tr = ' class="chosen"' if r == highlight_row else ""
        body.append(f"<tr{tr}>" + "".join(f"<td{cls(i)}>{cell(v)}</td>" for i, v in enumerate(row)) + "</tr>")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def figure(png: bytes, alt: str, caption: str) -> Raw:
    data = base64.b64encode(png).decode("ascii")
    return Raw(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
               f"<figcaption>{esc(caption)}</figcaption></figure>")


def kpis(items: Sequence[tuple[str, str]]) -> Raw:
    """Headline numbers: (value, label) boxes."""
    return Raw('<div class="kpi">' + "".join(f"<div><b>{esc(v)}</b><span>{esc(k)}</span></div>" for v, k in items)
               + "</div>")


def para(text: str, cls: str = "") -> Raw:
    c = f' class="{esc(cls)}"' if cls else ""
    return Raw(f"<p{c}>{esc(text)}</p>")


def pre(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def heading(text: str, level: int = 3) -> Raw:
    return Raw(f"<h{level}>{esc(text)}</h{level}>")


def details(summary: str, parts: Iterable[str]) -> Raw:
    """A folded block (no script needed: the browser's own <details>)."""
    return Raw(f"<details><summary>{esc(summary)}</summary>" + "".join(cell(p) for p in parts) + "</details>")


def section(sid: str, title: str, parts: Iterable[str]) -> Raw:
    return Raw(f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>' + "".join(cell(p) for p in parts) + "</section>")


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document. ``sections``: (id, nav label, section html)."""
    nav = "<nav>" + "".join(f'<a href="#{esc(sid)}">{esc(label)}</a>' for sid, label, _ in sections) + "</nav>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>{nav}"
            + "".join(s for _, _, s in sections) + "</body></html>\n")


# ------------------------------------------------------------------------------------------------
# Number formatting (units spelled out: a reader should never guess)
# ------------------------------------------------------------------------------------------------
def gib(nbytes: float) -> str:
    return f"{nbytes / GiB:,.1f} GiB"


def seconds(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    if abs(s) < 1e-3:
        return f"{s * 1e6:,.0f} us"
    if abs(s) < 1:
        return f"{s * 1e3:,.1f} ms"
    return f"{s:,.3f} s"


def duration(s: float) -> str:
    """Wall-clock spans: hours or days."""
    if not math.isfinite(s):
        return "n/a"
    if s < 3600 * 48:
        return f"{s / 3600:,.1f} h"
    return f"{s / 86400:,.1f} days"


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if math.isfinite(x) else "n/a"


def count(x: float) -> str:
    """Large counts with SI suffixes (tokens, GPU-hours)."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.2f}{suf}"
    return f"{x:,.0f}"
