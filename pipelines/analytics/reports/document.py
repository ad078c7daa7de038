"""What every report is made of: sections of text, tables and charts, plus a JSON payload.

Report builders only assemble a :class:`Report`; the writers in
:mod:`pipelines.analytics.reports.output` turn the same object into CSV, JSON, HTML and
PDF, so the four formats can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any


class ReportError(ValueError):
    """A report cannot be produced from what the workspace holds; the message says what to do."""


@dataclass(frozen=True)
class Table:
    """A table; ``name`` becomes the CSV file name (``<name>.csv``)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass(frozen=True)
class Series:
    """One line (x/y pairs) of a line chart, or the bars of a bar chart (x are labels)."""

    name: str
    x: list[Any]
    y: list[float]


@dataclass(frozen=True)
class Chart:
    """A small chart: ``kind`` is ``line`` (numeric x) or ``bar`` (label x)."""

    title: str
    kind: str
    series: list[Series]
    x_label: str = ""
    y_label: str = ""
    # Horizontal guide lines, e.g. the PSI bands at 0.1 and 0.25.
    guides: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class Report:
    """One generated report: ``data`` is the machine-readable payload (``report.json``)."""

    name: str
    title: str
    period_start: date
    period_end: date
    sections: list[Section]
    data: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> list[Table]:
        return [table for section in self.sections for table in section.tables]

    def section_titles(self) -> list[str]:
        return [section.title for section in self.sections]
