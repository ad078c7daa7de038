"""Write a report into the retention-protected records area, all files or none.

Layout: ``records/reports/<name>/<run id>/`` holding ``report.json`` (the
payload), one CSV per table, ``report.html``, ``report.pdf`` and
``manifest.json`` (SHA-256 of every file). CSV cells a spreadsheet would run as
formulas are neutralised (``pipelines.core.csvsafe``). Files are rendered into a dot-named
staging directory (never backed up) and the directory is renamed into place,
so a reader never sees half a report. Every file is scanned for clear card
numbers before the rename, and the generation is recorded in the audit trail.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.analytics.reports.document import Report
from pipelines.analytics.reports.html import render_html
from pipelines.analytics.reports.pdf import render_pdf
from pipelines.compliance import audit
from pipelines.compliance.carddata import CardDataError, find_card_numbers
from pipelines.core import csvsafe
from pipelines.core.workspace import Workspace

REPORTS_DIR = "reports"
FLOAT_DECIMALS = 6


@dataclass(frozen=True)
class WrittenReport:
    """Where a report went and what it holds."""

    name: str
    run_id: str
    directory: Path
    files: dict[str, str]  # file name -> SHA-256
    summary: dict[str, Any]

    @property
    def html(self) -> Path:
        return self.directory / "report.html"

    @property
    def pdf(self) -> Path:
        return self.directory / "report.pdf"


def reports_root(ws: Workspace) -> Path:
    return ws.records / REPORTS_DIR


def new_run_id(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_files(report: Report, staging: Path, generated_at: str, run_id: str) -> None:
    payload = {
        "report": report.name, "title": report.title, "run_id": run_id,
        "generated_at": generated_at,
        "period": {"from": report.period_start.isoformat(), "to": report.period_end.isoformat()},
        "summary": report.summary, **report.data,
    }
    (staging / "report.json").write_text(
        json.dumps(clean(payload), indent=2, default=_json_default, allow_nan=False),
        encoding="utf-8")
    for table in report.tables():
        with (staging / f"{table.name}.csv").open("w", newline="", encoding="utf-8") as handle:
            csvsafe.write_rows(handle, table.columns, clean(table.rows))
    (staging / "report.html").write_text(render_html(report, generated_at, run_id),
                                         encoding="utf-8")
    render_pdf(report, staging / "report.pdf", generated_at, run_id)


def clean(value: Any) -> Any:
    """Floats rounded to 6 decimals, NaN as null, recursively.

    Strict JSON has no NaN. Rounding keeps reports readable and stops long
    fractions (``0.6085651458302275``) from looking like card numbers to the
    scanner every output must pass.
    """
    if isinstance(value, float):
        return None if value != value else round(value, FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def scan_for_card_numbers(directory: Path) -> list[str]:
    """``file: masked number`` for every Luhn-valid 13-19 digit run in the files."""
    found = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".pdf":
            # The cross-reference table is zero-padded byte offsets, not content.
            data = data.rsplit(b"\nxref\n", 1)[0]
        text = data.decode("latin-1")
        found += [f"{path.name}: {masked}" for masked in find_card_numbers(text)]
    return found


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def write_report(ws: Workspace, report: Report, actor: str | None = None) -> WrittenReport:
    """Render ``report`` in every format into the records area and audit it.

    Raises ``CardDataError`` (and writes nothing) if any output would hold a
    clear card number.
    """
    now = datetime.now(UTC)
    generated_at = now.isoformat(timespec="seconds")
    run_id = new_run_id(now)
    parent = reports_root(ws) / report.name
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{run_id}.staging"
    staging.mkdir()
    try:
        _write_files(report, staging, generated_at, run_id)
        leaks = scan_for_card_numbers(staging)
        if leaks:
            raise CardDataError(
                f"report {report.name} would contain clear card numbers ({'; '.join(leaks[:5])});"
                " nothing was written"
            )
        files = _hashes(staging)
        (staging / "manifest.json").write_text(json.dumps(
            {"report": report.name, "run_id": run_id, "generated_at": generated_at,
             "files": files}, indent=2), encoding="utf-8")
        final = parent / run_id
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    audit.record(
        ws, "report.generate", actor=actor, subject=f"reports/{report.name}/{run_id}",
        details={"report": report.name, "run_id": run_id,
                 "period": [report.period_start.isoformat(), report.period_end.isoformat()],
                 "files": files, "summary": clean(report.summary)},
    )
    return WrittenReport(report.name, run_id, final, files, report.summary)
