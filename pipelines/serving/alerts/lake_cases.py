"""The lake's ``cases`` table on AWS: one Parquet object per case, its current version.

The Athena DDL declares ``cases`` unpartitioned at ``s3://<lake>/cases/``; each
case is the object ``cases/case-<case id>.parquet`` holding one
``CASES_SCHEMA`` row, so Athena (and the named queries) read one row per case,
as they do over the local export. Each new version of a case replaces the
object; the lake bucket is versioned, so every earlier version stays in S3.

Writes are conditional, so they are idempotent and never lose an update:

* the alert Lambda opens a primary alert's case with ``If-None-Match: *``; a
  retried invocation finds the case there (open or already worked) and leaves it;
* an investigator's change (``pipelines.serving.alerts.lake_queue``) replaces
  the version it read (``If-Match`` its ETag); a concurrent change fails it.

On AWS a case's id is its primary alert's id (stable across Lambda retries).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipelines.compliance.carddata import assert_no_card_data
from pipelines.data.lake.tables import CASES_SCHEMA, CASES_TABLE
from pipelines.serving.alerts.cases import DISPOSITIONS

CASE_TIMES = ("opened_at", "updated_at", "closed_at")
TRANSACTION_METADATA = "transaction-id"
_CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def cases_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Case records (ISO or datetime times) as ``CASES_SCHEMA`` rows, disposition mapped to 0/1.

    The one conversion the local export and the lake writer on AWS both use.
    """
    converted = []
    for source in rows:
        row = {name: source.get(name) for name in CASES_SCHEMA.names}
        for column in CASE_TIMES:
            row[column] = _time(row[column])
        row["disposition_is_fraud"] = DISPOSITIONS.get(row["disposition"] or "")
        assert_no_card_data(row)  # nothing after ingestion may hold a card number in clear
        converted.append(row)
    return pa.Table.from_pylist(converted, schema=CASES_SCHEMA)


def case_key(case_id: int) -> str:
    """The case's object under the ``cases`` table location."""
    return f"{CASES_TABLE}/case-{int(case_id)}.parquet"


def is_conflict(exc: Exception) -> bool:
    """True for S3's answer to a conditional write whose condition failed."""
    response = getattr(exc, "response", {}) or {}
    return str(response.get("Error", {}).get("Code", "")) in _CONFLICT_CODES


def put_case(s3: Any, bucket: str, row: Mapping[str, Any], transaction_id: str,
             **condition: str) -> str:
    """Write ``row`` as the case's current version; returns the new ETag.

    The alerted transaction travels as object metadata (``transaction-id``), so
    closing the case can label it without a query. ``condition`` is
    ``IfNoneMatch="*"`` (create only) or ``IfMatch=<etag>`` (replace exactly the
    version read).
    """
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    # No Arrow schema blob: Athena, DuckDB and Spark all see plain Parquet types.
    pq.write_table(cases_table([row]), buffer, compression="zstd", store_schema=False)
    response = s3.put_object(Bucket=bucket, Key=case_key(row["case_id"]),
                             Body=buffer.getvalue(),
                             Metadata={TRANSACTION_METADATA: transaction_id}, **condition)
    return str(response.get("ETag", ""))


def open_case(s3: Any, bucket: str, alert: Mapping[str, Any]) -> bool:
    """Open the case of a primary alert once; False if it exists (a retry, or worked since)."""
    raised = alert["raised_at"]
    row = {"case_id": alert["alert_id"], "alert_id": alert["alert_id"], "status": "open",
           "opened_at": raised, "updated_at": raised}
    try:
        put_case(s3, bucket, row, alert["transaction_id"], IfNoneMatch="*")
    except Exception as exc:
        if is_conflict(exc):
            return False
        raise
    return True
