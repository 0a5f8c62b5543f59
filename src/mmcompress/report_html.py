"""`report.html`: the before/after table plus bar charts, one self-contained page (inline SVG)."""

from __future__ import annotations

from html import escape
from typing import Any

from .report import LABELS, comparison_rows, is_timed, measurement_note, stage_details

BAR_W, ROW_H = 320, 26


def _bars(title: str, pairs: list[tuple[str, float, float]], unit: str) -> str:
    """Grouped horizontal bars: before (grey) and after (blue) for each metric."""
    if not pairs:
        return ""
    top = max(max(b, a) for _, b, a in pairs) or 1.0
    rows = []
    for i, (label, b, a) in enumerate(pairs):
        y = i * 2 * ROW_H
        for j, (value, colour) in enumerate(((b, "#9aa0a6"), (a, "#1a73e8"))):
            w = max(1.0, BAR_W * value / top)
            yy = y + j * ROW_H
            rows.append(f'<rect x="200" y="{yy + 4}" width="{w:.1f}" height="{ROW_H - 8}" '
                        f'fill="{colour}"/><text x="{205 + w:.1f}" y="{yy + ROW_H - 9}" '
                        f'font-size="12">{value:.4g}{unit}</text>')
        rows.append(f'<text x="0" y="{y + ROW_H + 4}" font-size="13">{escape(label)}</text>')
    height = len(pairs) * 2 * ROW_H
    return (f"<h3>{escape(title)}</h3><svg width='{200 + BAR_W + 90}' height='{height}' "
            f"role='img'>{''.join(rows)}</svg>")


def report_html(report: dict[str, Any]) -> str:
    before, after = report["before"], report["after"]
    table = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                    for row in comparison_rows(before, after))
    both = [k for k in LABELS if k in before and k in after]
    quality = [(LABELS[k], before[k], after[k]) for k in both
               if k not in ("size_bytes", "params") and not k.startswith(("latency", "peak"))]
    cost = [(LABELS[k], before[k] / (1e6 if k in ("size_bytes", "params") else 1), after[k] /
             (1e6 if k in ("size_bytes", "params") else 1))
            for k in both if k in ("size_bytes", "params") or k.startswith(("latency", "peak"))]
    stages = "".join(f"<li><code>{escape(s['kind'])}/{escape(s['method'])}</code>: "
                     f"{s['seconds']:.1f} s, {escape(stage_details(s['summary']))}</li>"
                     for s in report["stages"])
    m = report.get("measurement", {})
    note = (f"<h2>Measurement</h2><p>{_code(measurement_note(m, is_timed(after)))}</p>"
            if m else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mmcompress report</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto}}td,th{{padding:4px 10px}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>mmcompress report</h1><p>Model <code>{escape(str(report['model']))}</code>, data
<code>{escape(str(m.get('data', '')))}</code> ({m.get('examples', '?')} examples).
Grey: before; blue: after.</p><ol>{stages}</ol>
<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{table}</table>
{_bars("Quality", quality, "")}{_bars("Cost (size MB, peak MiB, M params, ms)", cost, "")}
{note}</body></html>
"""


def _code(markdown: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> elements."""
    parts = escape(markdown).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
