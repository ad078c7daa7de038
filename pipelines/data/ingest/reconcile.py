"""The reconciliation every run prints and records.

Identities checked on every run: rows read = rows curated + rows quarantined +
duplicates skipped; and, per file, the physical lines counted from its bytes
= the lines the reader placed (header, blank, or part of a row), so a row a
parser swallowed cannot hide. Counts are given per source file and quarantine
reasons are counted, so an analyst can trace every row without opening the
data. The report holds counts and names only, never row values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.table import Table

from pipelines.data.ingest.validation import DUPLICATE_STATUSES, STATUS_CURATED, STATUS_QUARANTINED


@dataclass
class SourceCounts:
    """Row counts for one landing file."""

    source_file: str
    format: str
    sha256: str = ""  # the content read (what quarantine keys and derived ids are based on)
    lines: int = 0  # physical lines counted from the bytes (rows for Parquet)
    lines_accounted: int = 0  # lines the reader placed: header, blank, or part of a row
    rows_read: int = 0
    rows_curated: int = 0
    rows_quarantined: int = 0
    duplicates_skipped: int = 0


@dataclass
class IngestReport:
    """Everything a run did, in counts; stored as JSON and as a catalog row."""

    ingestion_id: str
    started_at: str
    finished_at: str = ""
    token_key_id: str = ""
    sources: list[SourceCounts] = field(default_factory=list)
    rows_read: int = 0
    rows_curated: int = 0
    rows_quarantined: int = 0
    duplicates_in_batch: int = 0
    duplicates_seen_before: int = 0
    duplicates_quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)  # zone -> ["dt=..."]
    recovered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user, e.g. catalog busy

    @property
    def duplicates_skipped(self) -> int:
        return self.duplicates_in_batch + self.duplicates_seen_before + self.duplicates_quarantined

    @property
    def balanced(self) -> bool:
        """The reconciliation identity, overall and for every file."""
        overall = self.rows_read == (
            self.rows_curated + self.rows_quarantined + self.duplicates_skipped
        )
        per_file = all(
            s.rows_read == s.rows_curated + s.rows_quarantined + s.duplicates_skipped
            and s.lines == s.lines_accounted
            for s in self.sources
        )
        return overall and per_file and sum(self.quarantine_reasons.values()) == (
            self.rows_quarantined
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["duplicates_skipped"] = self.duplicates_skipped
        data["balanced"] = self.balanced
        return data

    @classmethod
    def from_dict(cls, data: dict) -> IngestReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["sources"] = [SourceCounts(**s) for s in data.get("sources", [])]
        return cls(**known)


def apply_counts(report: IngestReport, counts: list[tuple[int, str, str, int]]) -> None:
    """Fold ``(file index, status, reason, rows)`` groups from validation into the report."""
    reasons: Counter[str] = Counter()
    for file_index, status, reason, rows in counts:
        source = report.sources[file_index]
        source.rows_read += rows
        report.rows_read += rows
        if status == STATUS_CURATED:
            source.rows_curated += rows
            report.rows_curated += rows
        elif status == STATUS_QUARANTINED:
            source.rows_quarantined += rows
            report.rows_quarantined += rows
            reasons[reason] += rows
        elif status in DUPLICATE_STATUSES:
            source.duplicates_skipped += rows
            attribute = status.replace("duplicate_", "duplicates_")
            setattr(report, attribute, getattr(report, attribute) + rows)
        else:  # a status added to validation but not here would break the identity
            raise ValueError(f"unknown row status {status!r}")
    report.quarantine_reasons = dict(sorted(reasons.items()))


def render(report: IngestReport, console: Console | None = None) -> None:
    """Print the reconciliation as rich tables."""
    console = console or Console()
    files = Table(title=f"ingestion {report.ingestion_id}")
    for column in ("source file", "format", "lines", "read", "curated", "quarantined",
                   "duplicates"):
        files.add_column(column, justify="left" if column in ("source file", "format") else "right")
    for s in report.sources:
        lines = f"{s.lines:,}" if s.lines == s.lines_accounted else (
            f"[red]{s.lines_accounted:,} of {s.lines:,}[/]")
        files.add_row(s.source_file, s.format, lines, f"{s.rows_read:,}", f"{s.rows_curated:,}",
                      f"{s.rows_quarantined:,}", f"{s.duplicates_skipped:,}")
    files.add_row("[bold]total[/]", "", "", f"[bold]{report.rows_read:,}[/]",
                  f"[bold]{report.rows_curated:,}[/]", f"[bold]{report.rows_quarantined:,}[/]",
                  f"[bold]{report.duplicates_skipped:,}[/]")
    console.print(files)
    if report.quarantine_reasons:
        reasons = Table(title="quarantine reasons")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for reason, rows in report.quarantine_reasons.items():
            reasons.add_row(reason, f"{rows:,}")
        console.print(reasons)
    verdict = "[green]balanced[/]" if report.balanced else "[red]NOT balanced[/]"
    console.print(
        f"read {report.rows_read:,} = curated {report.rows_curated:,} + quarantined "
        f"{report.rows_quarantined:,} + duplicates {report.duplicates_skipped:,} "
        f"(in batch {report.duplicates_in_batch:,}, seen before "
        f"{report.duplicates_seen_before:,}, already quarantined "
        f"{report.duplicates_quarantined:,}): {verdict}"
    )
    for action in report.recovered:
        console.print(f"[yellow]recovery:[/] {action}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
