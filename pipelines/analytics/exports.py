"""Export the alert and case queue (SQLite) to the lake as Parquet, for SQL and dashboards.

Locally the queue lives in SQLite (``Workspace.cases_db``); on AWS Athena
reads the lake. Exporting both tables as Parquet and registering them in the
catalog lets the very same named queries run on both backends:

* ``lake/alerts/dt=YYYY-MM-DD/part-00000.parquet``: every alert (primary and
  grouped), partitioned by the UTC day of the alerted transaction;
* ``lake/cases/part-00000.parquet``: one row per case (a snapshot: cases change
  state, so the whole table is rewritten), with ``disposition_is_fraud`` derived
  from ``pipelines.serving.alerts.cases.DISPOSITIONS`` so SQL never repeats that mapping.

Each table is written to a staging directory and swapped in with renames
(``pipelines.data.features.store.publish``) under the shared workspace lock, so a
reader never sees a half-written export.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.compliance.carddata import assert_no_card_data
from pipelines.compliance.locks import workspace_lock
from pipelines.core.schema import PARTITION_COLUMN
from pipelines.core.workspace import Workspace
from pipelines.data.features.store import discard, publish, staging_dir
from pipelines.data.lake.catalog import register_table
from pipelines.data.lake.tables import (
    ALERTS_SCHEMA,
    ALERTS_TABLE,
    CASES_SCHEMA,  # noqa: F401  (re-exported: callers read both schemas here)
    CASES_TABLE,
    alerts_dir,
    cases_dir,
)
from pipelines.serving.alerts.cases import CaseQueue
from pipelines.serving.alerts.lake_cases import cases_table

PART_FILE = "part-00000.parquet"
_ALERT_TIMES = ("tx_timestamp", "raised_at")


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote."""

    alerts: int
    cases: int
    partitions: int
    registered: tuple[str, ...]


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _rows(db_path: Path, table: str) -> list[dict]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
    finally:
        db.close()


def read_alerts(db_path: Path) -> pa.Table:
    """Every alert in the queue as an ``ALERTS_SCHEMA`` table (``dt`` = transaction day)."""
    return alerts_table(_rows(db_path, ALERTS_TABLE))


def alerts_table(rows: list[dict]) -> pa.Table:
    """Alert records (ISO times, reasons as a JSON list or text) as ``ALERTS_SCHEMA`` rows.

    The one conversion both the local export and the alert Lambda on AWS use.
    """
    converted = []
    for source in rows:
        row = {name: source.get(name) for name in ALERTS_SCHEMA.names}
        for column in _ALERT_TIMES:
            value = row[column]
            row[column] = value if isinstance(value, datetime) else _parse_time(value)
        if not isinstance(row["reasons"], str):
            row["reasons"] = json.dumps(row["reasons"] or [])
        row[PARTITION_COLUMN] = row["tx_timestamp"].date().isoformat()
        assert_no_card_data(row)  # nothing after ingestion may hold a card number in clear
        converted.append(row)
    return pa.Table.from_pylist(converted, schema=ALERTS_SCHEMA)


def read_cases(db_path: Path) -> pa.Table:
    """Every case as a ``CASES_SCHEMA`` table, its disposition mapped to a 0/1 label."""
    closers = {row["case_id"]: row["actor"] for row in _rows(db_path, "case_events")
               if row["action"] == "closed"}
    rows = _rows(db_path, CASES_TABLE)
    for row in rows:
        row["closed_by"] = closers.get(row["case_id"])
    return cases_table(rows)


def _write_alerts(staging: Path, alerts: pa.Table) -> int:
    """One file per day; with no alert, one empty file that still has every column."""
    if alerts.num_rows == 0:
        pq.write_table(alerts, staging / PART_FILE, store_schema=False)
        return 0
    days = sorted(set(alerts.column(PARTITION_COLUMN).to_pylist()))
    for day in days:
        mask = pc.equal(alerts.column(PARTITION_COLUMN), day)
        part = alerts.filter(mask).drop_columns([PARTITION_COLUMN])
        target = staging / f"{PARTITION_COLUMN}={day}" / PART_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        # No Arrow schema blob: Athena, DuckDB and Spark all see plain Parquet types.
        pq.write_table(part, target, store_schema=False)
    return len(days)


def _publish_table(target: Path, write) -> int:
    staging = staging_dir(target)
    try:
        staging.mkdir(parents=True)
        written = write(staging)
        publish(staging, target)
    except BaseException:
        discard(staging)
        raise
    return written


def export_queue(ws: Workspace) -> ExportSummary:
    """Write the alerts and cases tables to the lake and register them in the catalog.

    An empty queue still writes empty tables, so queries over them return no
    rows rather than failing on a missing table.
    """
    CaseQueue(ws.cases_db)  # creates the schema when no alert was ever raised
    alerts, cases = read_alerts(ws.cases_db), read_cases(ws.cases_db)
    with workspace_lock(ws, exclusive=False):
        partitions = _publish_table(alerts_dir(ws), lambda d: _write_alerts(d, alerts))
        _publish_table(
            cases_dir(ws), lambda d: pq.write_table(cases, d / PART_FILE, store_schema=False)
        )
    registered = tuple(
        name
        for name, path, hive in (
            (ALERTS_TABLE, alerts_dir(ws), True),
            (CASES_TABLE, cases_dir(ws), False),
        )
        if register_table(ws, name, path, hive_partitioning=hive)
    )
    return ExportSummary(alerts.num_rows, cases.num_rows, partitions, registered)

