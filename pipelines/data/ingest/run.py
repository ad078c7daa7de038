"""One ingestion run, start to finish, on any filesystem (local workspace or S3).

``run_ingestion`` is the engine shared by ``fraudops ingest`` and the Glue job;
``ingest`` adds what only the local backend has: the workspace key file, a
process lock, and the DuckDB catalog.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.workspace import Workspace
from pipelines.data.ingest import writer
from pipelines.data.ingest.cardtext import card_column_advice
from pipelines.data.ingest.columns import (
    DEFAULT_TIME_UNIT,
    effective_time_origin,
    effective_time_unit,
    epoch_micros,
)
from pipelines.data.ingest.errors import IngestError, card_numbers_masked
from pipelines.data.ingest.layout import LakeLayout
from pipelines.data.ingest.ledger import Ledger
from pipelines.data.ingest.reconcile import IngestReport, SourceCounts, apply_counts
from pipelines.data.ingest.sources import RawFile, SourceFile, discover_sources, read_source
from pipelines.data.ingest.tokenise import Tokeniser, load_key
from pipelines.data.ingest.validation import card_columns, classify

READ_THREADS = 2

# progress(stage, done, total): lets the CLI draw a bar without this module printing.
Progress = Callable[[str, int, int], None]
# commit_guard(report) wraps the run's commit point (publish + ledger commit); the
# local backend passes the audit trail's write-ahead ``committing``.
CommitGuard = Callable[[IngestReport], AbstractContextManager[object]]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def _no_guard(report: IngestReport) -> AbstractContextManager[object]:
    return nullcontext()


def new_ingestion_id(now: datetime | None = None) -> str:
    """Sortable, unique run id, e.g. ``ing-20240101T120000Z-1a2b3c4d``."""
    now = now or datetime.now(UTC)
    return f"ing-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def run_ingestion(
    layout: LakeLayout,
    paths: Sequence[str],
    tokeniser: Tokeniser,
    column_map: Mapping[str, str] | None = None,
    fmt: str = "auto",
    progress: Progress = _no_progress,
    commit_guard: CommitGuard = _no_guard,
    time_origin: datetime | None = None,
    time_unit: str | None = None,
) -> IngestReport:
    """Ingest landing files into the curated and quarantine zones; return the reconciliation.

    The caller must hold the ingestion lock (one run at a time per lake). Every
    file is read and checked before anything is written, so a refused file
    (``IngestError``) leaves the lake untouched. ``time_origin`` (else the
    column map's, see ``columns.ColumnMap``): numeric times count ``time_unit``s (else
    the column map's, else seconds) from it.
    """
    column_map = column_map or {}
    time_origin = effective_time_origin(time_origin, column_map)
    time_unit = effective_time_unit(time_unit, column_map, time_origin)
    with card_numbers_masked():  # no exception leaves ingestion with a card number in it
        return _run(layout, paths, tokeniser, column_map, fmt, progress, commit_guard,
                    time_origin, time_unit)


def _run(
    layout: LakeLayout,
    paths: Sequence[str],
    tokeniser: Tokeniser,
    column_map: Mapping[str, str],
    fmt: str,
    progress: Progress,
    commit_guard: CommitGuard,
    time_origin: datetime | None,
    time_unit: str,
) -> IngestReport:
    ledger = Ledger(layout.fs, layout.state)
    recovered = writer.recover(layout, ledger, lambda report: _write_log(layout, report))
    started = datetime.now(UTC)
    ingestion_id = new_ingestion_id(started)
    sources = discover_sources(layout.fs, paths, fmt, display=layout.display)
    if not sources:
        shown = ", ".join(layout.display(p) for p in paths)
        raise IngestError(f"no landing files (.csv, .jsonl, .parquet) found under {shown}")

    raw_files = _read_all(layout, sources, column_map, progress)

    progress("validating", 0, 1)
    raw = _combine(raw_files)
    card_values = card_text(raw.column("card_number"))
    classified = classify(
        raw=raw,
        source_files=[raw_file.source.display for raw_file in raw_files],
        cards=card_columns(card_values, tokeniser.card_lookup(card_values)),
        seen_ids=ledger.seen_transaction_ids(),
        seen_quarantine=ledger.seen_quarantine_keys(),
        ingestion_id=ingestion_id,
        ingestion_day=f"{started:%Y-%m-%d}",
        file_keys=[raw_file.sha256 for raw_file in raw_files],
        time_origin=time_origin,
        time_unit=time_unit,
    )
    _refuse_files_without_times(raw_files, classified.counts, time_origin, time_unit)
    report = IngestReport(
        ingestion_id=ingestion_id,
        started_at=started.isoformat(),
        token_key_id=tokeniser.key_id,
        sources=[SourceCounts(r.source.display, r.source.format, sha256=r.sha256, lines=r.lines,
                              lines_accounted=r.lines_accounted) for r in raw_files],
        recovered=recovered,
    )
    apply_counts(report, classified.counts)
    report.notes.extend(card_column_advice(report.quarantine_reasons))
    if time_origin is not None and time_unit == DEFAULT_TIME_UNIT:
        report.notes.extend(time_unit_advice(classified.curated, time_origin,
                                             _time_column(column_map)))
    progress("validating", 1, 1)

    progress("writing", 0, 1)
    staged = writer.stage_zone(layout, ingestion_id, layout.curated, "curated", classified.curated)
    staged += writer.stage_zone(
        layout, ingestion_id, layout.quarantine, "quarantine", classified.quarantine
    )
    report.partitions = {
        "curated": writer.partitions_of(classified.curated),
        "quarantine": writer.partitions_of(classified.quarantine),
    }
    report.finished_at = datetime.now(UTC).isoformat()
    writer.write_journal(layout, ingestion_id, staged, report.to_dict())
    with commit_guard(report):
        try:
            writer.publish(layout, staged)
            ledger.commit(
                ingestion_id, classified.curated.column("transaction_id"),
                classified.quarantine_keys,
            )
        except BaseException:
            # Undo now if we can; if the process dies here instead, ``recover`` does it next run.
            if not ledger.is_committed(ingestion_id):
                writer.rollback(layout, ingestion_id, staged)
            raise
    _write_log(layout, report.to_dict())
    writer.finish(layout, ingestion_id)
    progress("writing", 1, 1)
    return report


def _read_all(
    layout: LakeLayout, sources: list[SourceFile], column_map: Mapping[str, str],
    progress: Progress,
) -> list[RawFile]:
    """Read files two at a time (Arrow parses without the GIL), keeping their order."""
    progress("reading", 0, len(sources))
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        futures = [pool.submit(read_source, layout.fs, s, column_map) for s in sources]
        raw_files = []
        for done, future in enumerate(futures, start=1):
            raw_files.append(future.result())  # re-raises a file's IngestError, in order
            progress("reading", done, len(sources))
    return raw_files


_TIME_REASONS = frozenset({"bad_timestamp", "missing_timestamp"})


def _refuse_files_without_times(raw_files: list[RawFile], counts: list[tuple[int, str, str, int]],
                                time_origin: datetime | None, time_unit: str) -> None:
    """A file none of whose rows has a usable time is misread, not dirty: refuse the run.

    Quarantining every row and "succeeding" with nothing curated would only move
    the failure to the next step; the usual cause is relative times without an origin.
    """
    rows = np.zeros(len(raw_files), dtype=np.int64)
    timeless = np.zeros(len(raw_files), dtype=np.int64)
    for file_index, _, reason, n in counts:
        rows[file_index] += n
        timeless[file_index] += n if reason in _TIME_REASONS else 0
    for index in np.flatnonzero((rows > 0) & (timeless == rows)):
        hint = (f"its times are neither ISO-8601 nor {time_unit} from {time_origin.isoformat()}"
                if time_origin else "give ISO-8601 times or epoch seconds; if the numbers count "
                "seconds from a start, pass --time-origin ISO8601 (or \"time_origin\" in the "
                "column map)")
        raise IngestError(
            f"{raw_files[index].source.display}: none of its {rows[index]:,} rows has a usable "
            f"timestamp, so nothing from this run was stored: {hint}"
        )


# A file this big whose offsets all fall in its origin's first hour, in whole seconds, most
# likely counts another unit (PaySim's ``step`` counts hours: a month would become 12 minutes).
_SUSPECT_ROWS = 1_000
_SUSPECT_SPAN_US = 3_600 * 1_000_000


def time_unit_advice(curated: pa.Table, time_origin: datetime, column: str) -> list[str]:
    """Warn (never refuse) per file whose second offsets look like another unit.

    Silence costs every window, hour of day and the day split; a warning costs
    nothing if the data really spans minutes. Runs on the curated rows only (one
    pass of numpy over their timestamps).
    """
    if curated.num_rows < _SUSPECT_ROWS:
        return []
    offsets = (curated.column("timestamp").cast(pa.int64()).to_numpy()
               - epoch_micros(time_origin))
    files = curated.column("source_file").combine_chunks()
    codes, names = files.indices.to_numpy(), files.dictionary.to_pylist()
    notes = []
    for code in np.flatnonzero(np.bincount(codes, minlength=len(names)) >= _SUSPECT_ROWS):
        mine = offsets[codes == code]
        if mine.min() < 0 or mine.max() >= _SUSPECT_SPAN_US or np.any(mine % 1_000_000):
            continue
        notes.append(
            f"{names[code]}: warning: its {mine.size:,} rows' times in {column!r} span only "
            f"{(mine.max() - mine.min()) // 1_000_000:,} seconds from the time origin: if those "
            "numbers count minutes, hours or days (PaySim's step counts hours), ingest again "
            "with --time-unit minutes|hours|days (or \"time_unit\" in the column map); as "
            "seconds every window, hour of day and day split is wrong")
    return notes


def _time_column(column_map: Mapping[str, str]) -> str:
    """The user's name of the timestamp column, for messages."""
    return next((name for name, target in column_map.items() if target == "timestamp"),
                "timestamp")


def card_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trimmed card values; blank means no card (an optional column), not a bad one."""
    trimmed = pc.utf8_trim_whitespace(column)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _write_log(layout: LakeLayout, report: dict) -> None:
    layout.write_json(f"{layout.logs}/{report['ingestion_id']}.json", report)


def _combine(raw_files: list[RawFile]) -> pa.Table:
    """One table for the batch, with ``_file`` (the index of the file it came from)."""
    tables, file_ids = [], []
    for index, raw in enumerate(raw_files):
        tables.append(raw.table)
        file_ids.append(np.full(raw.table.num_rows, index, dtype=np.int32))
    combined = pa.concat_tables(tables)
    combined = combined.append_column("_file", pa.array(np.concatenate(file_ids), pa.int32()))
    return combined


# --- local backend -------------------------------------------------------------------------
@contextmanager
def ingestion_lock(ws: Workspace) -> Iterator[None]:
    """One ingestion at a time per workspace (the ledger and recovery assume it)."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    with open(ws.state_dir / "ingest.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest(
    ws: Workspace,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    column_map: Mapping[str, str] | None = None,
    fmt: str = "auto",
    key_file: Path | None = None,
    progress: Progress = _no_progress,
    time_origin: datetime | None = None,
    time_unit: str | None = None,
) -> IngestReport:
    """Ingest local files or directories (default: the workspace landing zone).

    Records the reconciliation in the catalog's ``ingestion_runs`` table and
    refreshes the ``transactions`` and ``quarantine`` views. ``time_origin``:
    numeric times count ``time_unit``s (default seconds) from it (else the column
    map's, else epoch).
    """
    from pipelines.compliance import audit
    from pipelines.compliance.locks import workspace_lock
    from pipelines.data.lake import catalog  # the catalog imports nothing from ingest

    layout = LakeLayout.for_workspace(ws)
    tokeniser = Tokeniser(load_key(ws.secrets, key_file))
    targets = [str(Path(p).expanduser().resolve()) for p in (paths or [ws.landing])]
    ledger = Ledger(layout.fs, layout.state)

    def audited(report: IngestReport) -> AbstractContextManager[object]:
        # One ``ingest.run`` entry per committed run, recovered if the process dies.
        return audit.committing(
            ws, "ingest.run", report.ingestion_id, _audit_details(report),
            when_exists=[Path(ledger.committed_path(report.ingestion_id))],
        )

    try:
        # Shared workspace lock: a backup (exclusive) never sees a half-published run.
        with ingestion_lock(ws), workspace_lock(ws, exclusive=False):
            report = run_ingestion(layout, targets, tokeniser, column_map, fmt, progress,
                                   commit_guard=audited, time_origin=time_origin,
                                   time_unit=time_unit)
    except IngestError as exc:
        audit.record(ws, "ingest.refused", subject=", ".join(targets), details={"error": str(exc)})
        raise
    if report.recovered:
        audit.record(ws, "ingest.recover", subject="ingest", details={"actions": report.recovered})
    try:
        catalog.sync_ingestion_runs(ws)
        catalog.refresh_catalog(ws)
    except catalog.CatalogError as exc:
        # The data is committed; the catalog is derived and catches up on the next run.
        report.notes.append(f"{exc}; the run is committed and will be recorded next time")
    return report


def _audit_details(report: IngestReport) -> dict:
    """Counts only: the audit trail must never hold row values."""
    return {
        "sources": [s.source_file for s in report.sources],
        "rows_read": report.rows_read,
        "rows_curated": report.rows_curated,
        "rows_quarantined": report.rows_quarantined,
        "duplicates_skipped": report.duplicates_skipped,
        "quarantine_reasons": report.quarantine_reasons,
        "balanced": report.balanced,
        "token_key_id": report.token_key_id,
    }
