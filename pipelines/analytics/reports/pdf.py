"""PDF rendering of a report with reportlab (pure Python, no network, no system fonts).

Page streams are left uncompressed so the records area can be scanned for
card numbers like every other file (a compressed stream would hide them).
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, TableStyle
from reportlab.platypus import Table as PdfTable

from pipelines.analytics.reports.document import Chart, Report, Table
from pipelines.analytics.reports.html import format_cell

# Longer tables are cut in the PDF (the CSV next to it has every row).
MAX_PDF_ROWS = 300
MAX_CELL_CHARS = 1500
# Padding: reportlab tables pad each cell 6 pt left and right, plus a little slack.
CELL_FONT, CELL_FONT_SIZE, CELL_PADDING = "Helvetica", 7, 14.0
BOLD_FONT = "Helvetica-Bold"  # <b> in a Helvetica paragraph
_PALETTE = (colors.HexColor("#0969da"), colors.HexColor("#cf222e"),
            colors.HexColor("#1a7f37"), colors.HexColor("#8250df"))


def render_pdf(report: Report, path: Path, generated_at: str, run_id: str) -> None:
    """Write the report as a landscape A4 PDF at ``path``."""
    styles = getSampleStyleSheet()
    cell = styles["BodyText"].clone("cell", fontName=CELL_FONT, fontSize=CELL_FONT_SIZE,
                                    leading=CELL_FONT_SIZE + 1.5)
    doc = SimpleDocTemplate(
        str(path), pagesize=landscape(A4), title=report.title, author="fraudops",
        leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.5 * cm, bottomMargin=1.5 * cm,
        pageCompression=0, invariant=1,
    )
    story: list = [
        Paragraph(escape(report.title), styles["Title"]),
        Paragraph(escape(f"Period {report.period_start} to {report.period_end}; generated "
                         f"{generated_at}; run {run_id}"), styles["Italic"]),
    ]
    for section in report.sections:
        story.append(Paragraph(escape(section.title), styles["Heading2"]))
        story += [Paragraph(escape(text), styles["BodyText"]) for text in section.paragraphs]
        for table in section.tables:
            story += _table(table, styles, cell, doc.width)
        for chart in section.charts:
            story += [_chart(chart), Spacer(1, 0.3 * cm)]
    doc.build(story)


def _table(table: Table, styles: dict, cell: object, width: float) -> list:
    shown = table.rows[:MAX_PDF_ROWS]
    data = [[Paragraph(f"<b>{escape(c)}</b>", cell) for c in table.columns]]
    data += [[Paragraph(escape(_clipped(format_cell(v))), cell) for v in row] for row in shown]
    if not shown:
        data.append([Paragraph("(none)", cell)] + [""] * (len(table.columns) - 1))
    pdf_table = PdfTable(data, colWidths=column_widths(table, width), repeatRows=1)
    pdf_table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f6f8fa")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))
    out = [Paragraph(escape(table.title), styles["Heading4"]), pdf_table]
    notes = [table.note] if table.note else []
    if len(table.rows) > MAX_PDF_ROWS:
        notes.append(f"First {MAX_PDF_ROWS} of {len(table.rows):,} rows; "
                     f"{table.name}.csv has them all.")
    out += [Paragraph(escape(n), styles["Italic"]) for n in notes]
    return out + [Spacer(1, 0.2 * cm)]


def _clipped(text: str) -> str:
    """A cell's text, cut so one row always fits on a page (reportlab cannot split a row)."""
    if len(text) <= MAX_CELL_CHARS:
        return text
    return text[:MAX_CELL_CHARS] + " ... (cut; the CSV has the full text)"


def column_widths(table: Table, width: float) -> list[float]:
    """Column widths that keep every word (date, id, amount) unbroken where possible.

    Each column gets at least the width of its longest word, and the rest of
    the page is shared in proportion to how much more text the column holds.
    """
    sample = [table.columns] + [[format_cell(v) for v in row] for row in table.rows[:50]]
    minimum, desired = [], []
    for index in range(len(table.columns)):
        texts = [str(row[index]) for row in sample]
        longest_word = max(
            [_text_width(word) for text in texts[1:] for word in text.split()]
            + [stringWidth(word, BOLD_FONT, CELL_FONT_SIZE) for word in texts[0].split()]
        )
        typical = sum(_text_width(text) for text in texts[1:]) / max(len(texts) - 1, 1)
        minimum.append(min(longest_word, width * 0.3) + CELL_PADDING)
        desired.append(max(typical, longest_word) + CELL_PADDING)
    spare = width - sum(minimum)
    if spare <= 0:
        return [width * m / sum(minimum) for m in minimum]
    extra = [d - m for d, m in zip(desired, minimum, strict=True)]
    if sum(extra) <= spare:  # everything fits on one line: share the rest evenly
        return [d + (spare - sum(extra)) / len(desired) for d in desired]
    return [m + spare * e / sum(extra) for m, e in zip(minimum, extra, strict=True)]


def _text_width(text: str) -> float:
    return stringWidth(text, CELL_FONT, CELL_FONT_SIZE)


def _finite(values: list[float]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else 0.0 for v in values]


def _chart(chart: Chart) -> Drawing:
    drawing = Drawing(22 * cm, 7.5 * cm)
    drawing.add(String(0, 7.5 * cm - 12, chart.title, fontSize=10, fontName="Helvetica-Bold"))
    if chart.kind == "bar":
        plot = VerticalBarChart()
        series = chart.series[0]
        plot.data = [_finite(series.y)]
        plot.categoryAxis.categoryNames = [str(x) for x in series.x]
        plot.categoryAxis.labels.angle = 40
        plot.categoryAxis.labels.fontSize = 6
        plot.categoryAxis.labels.boxAnchor = "ne"
        plot.bars[0].fillColor = _PALETTE[0]
    else:
        plot = LinePlot()
        plot.data = [list(zip([float(x) for x in s.x], _finite(s.y), strict=True))
                     for s in chart.series]
        for index in range(len(chart.series)):
            plot.lines[index].strokeColor = _PALETTE[index % len(_PALETTE)]
    plot.x, plot.y, plot.width, plot.height = 1.5 * cm, 1.8 * cm, 19 * cm, 4.8 * cm
    top = max([v for s in chart.series for v in _finite(s.y)] + [g for g, _ in chart.guides]
              + [1e-9])
    if chart.kind == "bar":
        plot.valueAxis.valueMin, plot.valueAxis.valueMax = 0, top * 1.05
    else:
        plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = 0, top * 1.05
    drawing.add(plot)
    for value, label in chart.guides:
        y = plot.y + plot.height * value / (top * 1.05)
        drawing.add(Line(plot.x, y, plot.x + plot.width, y, strokeColor=colors.orange,
                         strokeDashArray=[3, 2]))
        drawing.add(String(plot.x + plot.width - 60, y + 2, label, fontSize=7))
    return drawing
