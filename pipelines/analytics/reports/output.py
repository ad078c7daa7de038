"""Write a report into the retention-protected records area, all files or none.

Layout: ``records/reports/<name>/<run id>/`` holding ``report.json`` (the
payload), one CSV per table, ``report.html``, ``report.pdf`` and
``manifest.json`` (SHA-256 of every file). CSV cells a spreadsheet would run as
formulas are neutralised (``pipelines.core.csvsafe``). Files are rendered into a dot-named
staging directory (never backed up) and the directory is renamed into place,
so a reader never sees half a report. Every file is scanned for clear card
numbers before the rename, and the generation is recorded in the audit trail.

On AWS (``publish_report``) the same files go to the Object-Lock records
bucket under ``reports/<name>/<run id>/``, each version locked in compliance
mode until the records retention ends (``pipelines.compliance.records_bucket``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.analytics.reports.document import Report
from pipelines.analytics.reports.html import render_html
from pipelines.analytics.reports.pdf import render_pdf
from pipelines.compliance import audit
from pipelines.compliance.carddata import CardDataError, card_numbers_in_file
from pipelines.compliance.records_bucket import RecordsBucket
from pipelines.core import csvsafe
from pipelines.core.workspace import Workspace

REPORTS_DIR = "reports"
MANIFEST = "manifest.json"
FLOAT_DECIMALS = 6


@dataclass(frozen=True)
class WrittenReport:
    """Where a report went and what it holds."""

    name: str
    run_id: str
    directory: Path
    files: dict[str, str]  # file name -> SHA-256
    summary: dict[str, Any]
    location: str = ""  # s3://records-bucket/reports/<name>/<run id>/ on AWS

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
    return [f"{path.name}: {masked}" for path in sorted(directory.iterdir())
            for masked in card_numbers_in_file(path.name, path.read_bytes())]


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _render(report: Report, staging: Path, now: datetime, run_id: str) -> dict[str, str]:
    """Every file plus ``manifest.json`` into ``staging``; the SHA-256 of each but the manifest.

    Raises ``CardDataError`` if any file would hold a clear card number.
    """
    generated_at = now.isoformat(timespec="seconds")
    _write_files(report, staging, generated_at, run_id)
    leaks = scan_for_card_numbers(staging)
    if leaks:
        raise CardDataError(
            f"report {report.name} would contain clear card numbers ({'; '.join(leaks[:5])});"
            " nothing was written"
        )
    files = _hashes(staging)
    (staging / MANIFEST).write_text(json.dumps(
        {"report": report.name, "run_id": run_id, "generated_at": generated_at,
         "files": files}, indent=2), encoding="utf-8")
    return files


def _audit(ws: Workspace, report: Report, run_id: str, files: dict[str, str], where: str,
           actor: str | None) -> None:
    audit.record(
        ws, "report.generate", actor=actor, subject=f"reports/{report.name}/{run_id}",
        details={"report": report.name, "run_id": run_id, "location": where,
                 "period": [report.period_start.isoformat(), report.period_end.isoformat()],
                 "files": files, "summary": clean(report.summary)},
    )


def write_report(ws: Workspace, report: Report, actor: str | None = None) -> WrittenReport:
    """Render ``report`` in every format into the records area and audit it.

    Raises ``CardDataError`` (and writes nothing) if any output would hold a
    clear card number.
    """
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    parent = reports_root(ws) / report.name
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{run_id}.staging"
    staging.mkdir()
    try:
        files = _render(report, staging, now, run_id)
        final = parent / run_id
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _audit(ws, report, run_id, files, str(final), actor)
    return WrittenReport(report.name, run_id, final, files, report.summary)


def publish_report(ws: Workspace, report: Report, records: RecordsBucket,
                   actor: str | None = None) -> WrittenReport:
    """Render ``report`` and write it to the Object-Lock records bucket, audited.

    Each file becomes ``reports/<name>/<run id>/<file>`` locked until the
    records retention ends; ``manifest.json`` goes last, so a run id with a
    manifest is complete (a failed run leaves locked files without one, which
    the manifest-less listing shows for what it is). ``directory`` in the
    result is the rendered copy in a temporary folder, gone after the call.
    """
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    prefix = f"{REPORTS_DIR}/{report.name}/{run_id}"
    with tempfile.TemporaryDirectory(prefix="fraudops-report-") as folder:
        staging = Path(folder)
        files = _render(report, staging, now, run_id)
        for name in [*files, MANIFEST]:
            records.put(f"{prefix}/{name}", (staging / name).read_bytes(), now)
    location = records.uri(f"{prefix}/")
    _audit(ws, report, run_id, files, location, actor)
    return WrittenReport(report.name, run_id, staging, files, report.summary, location)
