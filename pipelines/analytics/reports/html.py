"""A self-contained HTML rendering of a report (inline CSS and SVG charts, no scripts).

Compliance officers open it from the records area offline, so nothing is
loaded from the network.
"""

from __future__ import annotations

import html
import math
from typing import Any

from pipelines.analytics.reports.document import Chart, Report, Section, Table

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       color: #1d2733; max-width: 1100px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #d0d7de;
     padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #57606a; } table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #57606a; font-style: italic; } svg { margin: 0.5em 0; }
"""
_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700")
CHART_WIDTH, CHART_HEIGHT, MARGIN = 640, 260, 48


def format_cell(value: Any) -> str:
    """Numbers with thousands separators and at most 4 decimals; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.2f}"
    return str(value)


def render_html(report: Report, generated_at: str, run_id: str) -> str:
    """The whole report as one HTML document."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p class='meta'>Period {report.period_start} to {report.period_end} &middot; "
        f"generated {html.escape(generated_at)} &middot; run {html.escape(run_id)}</p>",
    ]
    parts += [_section(section) for section in report.sections]
    parts.append("</body></html>")
    return "\n".join(parts)


def _section(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
    parts += [_table(table) for table in section.tables]
    parts += [chart_svg(chart) for chart in section.charts]
    return "\n".join(parts)


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(
            f"<td class='num'>{html.escape(format_cell(v))}</td>"
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{html.escape(format_cell(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    if not table.rows:
        body.append(f"<tr><td colspan='{len(table.columns)}'>(none)</td></tr>")
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def chart_svg(chart: Chart) -> str:
    """A line or bar chart as inline SVG, scaled to its data."""
    values = [y for s in chart.series for y in s.y if y is not None and math.isfinite(y)]
    values += [g for g, _ in chart.guides]
    top = max(values, default=1.0) or 1.0
    plot_w, plot_h = CHART_WIDTH - 2 * MARGIN, CHART_HEIGHT - 2 * MARGIN
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' "
           f"height='{CHART_HEIGHT}' role='img' aria-label='{html.escape(chart.title)}'>",
           f"<text x='{MARGIN}' y='20' font-size='14' font-weight='bold'>"
           f"{html.escape(chart.title)}</text>",
           f"<line x1='{MARGIN}' y1='{MARGIN + plot_h}' x2='{MARGIN + plot_w}' "
           f"y2='{MARGIN + plot_h}' stroke='#57606a'/>",
           f"<line x1='{MARGIN}' y1='{MARGIN}' x2='{MARGIN}' y2='{MARGIN + plot_h}' "
           "stroke='#57606a'/>",
           f"<text x='{MARGIN - 4}' y='{MARGIN + 4}' font-size='10' text-anchor='end'>"
           f"{format_cell(float(top))}</text>",
           f"<text x='{MARGIN + plot_w / 2}' y='{CHART_HEIGHT - 8}' font-size='11' "
           f"text-anchor='middle'>{html.escape(chart.x_label)}</text>"]

    def y_pos(v: float) -> float:
        return MARGIN + plot_h - plot_h * max(0.0, v) / top

    for value, label in chart.guides:
        y = y_pos(value)
        out.append(f"<line x1='{MARGIN}' y1='{y:.1f}' x2='{MARGIN + plot_w}' y2='{y:.1f}' "
                   "stroke='#bf8700' stroke-dasharray='4 3'/>")
        out.append(f"<text x='{MARGIN + plot_w}' y='{y - 3:.1f}' font-size='10' "
                   f"text-anchor='end'>{html.escape(label)}</text>")
    if chart.kind == "bar":
        out += _bars(chart, plot_w, plot_h, y_pos)
    else:
        out += _lines(chart, plot_w, y_pos)
    out.append("</svg>")
    return "".join(out)


def _bars(chart: Chart, plot_w: float, plot_h: float, y_pos: Any) -> list[str]:
    series = chart.series[0]
    n = max(len(series.x), 1)
    slot = plot_w / n
    out = []
    for i, (label, value) in enumerate(zip(series.x, series.y, strict=True)):
        x = MARGIN + i * slot + slot * 0.15
        y = y_pos(value or 0.0)
        out.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{slot * 0.7:.1f}' "
                   f"height='{MARGIN + plot_h - y:.1f}' fill='{_COLOURS[0]}'>"
                   f"<title>{html.escape(str(label))}: {format_cell(value)}</title></rect>")
        if n <= 40:
            out.append(f"<text x='{x + slot * 0.35:.1f}' y='{MARGIN + plot_h + 12}' "
                       f"font-size='8' text-anchor='end' transform='rotate(-40 "
                       f"{x + slot * 0.35:.1f} {MARGIN + plot_h + 12})'>"
                       f"{html.escape(str(label))}</text>")
    return out


def _lines(chart: Chart, plot_w: float, y_pos: Any) -> list[str]:
    xs = [float(x) for s in chart.series for x in s.x]
    lo, hi = min(xs, default=0.0), max(xs, default=1.0)
    span = (hi - lo) or 1.0
    out = []
    for index, series in enumerate(chart.series):
        points = " ".join(
            f"{MARGIN + plot_w * (float(x) - lo) / span:.1f},{y_pos(y):.1f}"
            for x, y in zip(series.x, series.y, strict=True)
        )
        colour = _COLOURS[index % len(_COLOURS)]
        out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' "
                   f"points='{points}'/>")
        out.append(f"<text x='{MARGIN + 8}' y='{MARGIN + 12 * (index + 1)}' font-size='10' "
                   f"fill='{colour}'>{html.escape(series.name)}</text>")
    return out
