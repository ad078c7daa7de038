"""Working cases on AWS: read a case from the lake's ``cases`` table, change it, write it back.

What ``fraudops case show|assign|close --backend aws`` does; a close also
labels the alerted transaction in the lake's ``labels`` table
(``labels/dt=<day closed>/labels-case-<id>.parquet``), as a local close does. The rules are the
SQLite queue's (``assignment``/``closing`` in ``pipelines.serving.alerts.cases``);
the new version replaces exactly the one read (``If-Match``), so two
investigators changing one case at once cannot silently overwrite each other:
the second is told to look again. Kept apart from :mod:`lake_cases` so the
alert Lambda, which only opens cases, needs no read permission.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipelines.serving.alerts.cases import CaseError, assignment, case_label, closing
from pipelines.serving.alerts.lake_cases import (
    TRANSACTION_METADATA,
    case_key,
    is_conflict,
    put_case,
)


@dataclass(frozen=True)
class _Found:
    """A case as read: its row, the version's ETag and the alerted transaction."""

    row: dict[str, Any]
    etag: str
    transaction_id: str


@dataclass(frozen=True)
class LakeCaseQueue:
    """The cases of one lake bucket (``s3`` a boto3 S3 client)."""

    s3: Any
    bucket: str

    def show(self, case_id: int) -> dict[str, Any]:
        return self._read(case_id).row

    def assign(self, case_id: int, assignee: str) -> dict[str, Any]:
        found = self._read(case_id)
        row = found.row
        return self._replace(found, assignment(case_id, row["status"], row["disposition"],
                                               assignee))

    def close(self, case_id: int, disposition: str, actor: str) -> dict[str, Any]:
        """Close the case, then label its transaction in the lake's ``labels`` table.

        The label object is named by the case, so closing is the only writer of
        it and the training run reads it as it reads local dispositions.
        """
        found = self._read(case_id)
        changes = closing(case_id, found.row["status"], found.row["disposition"], disposition)
        if not found.transaction_id:
            raise CaseError(f"case {case_id} names no alerted transaction (object metadata "
                            f"{TRANSACTION_METADATA}); only cases the alert Lambda opened "
                            "can be closed here")
        closed = self._replace(found, {**changes, "closed_by": actor})
        self._write_label(case_id, case_label(case_id, found.transaction_id, disposition,
                                              closed["closed_at"]))
        return closed

    def _write_label(self, case_id: int, label: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipelines.data.labels import LABEL_SCHEMA
        from pipelines.data.lake.ddl import athena_tables

        known = datetime.fromisoformat(str(label["label_known_at"]))
        table = pa.Table.from_pylist([{**label, "label_known_at": known}], schema=LABEL_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", store_schema=False)
        prefix = athena_tables()["labels"].prefix  # where the Athena table reads labels
        key = f"{prefix}/dt={known.date().isoformat()}/labels-case-{case_id}.parquet"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=buffer.getvalue())

    def _read(self, case_id: int) -> _Found:
        import pyarrow.parquet as pq

        key = case_key(case_id)
        try:
            found = self.s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise CaseError(
                    f"no case {case_id} at s3://{self.bucket}/{key}: the alert Lambda opens a "
                    "case per primary alert; list them with `fraudops athena query --named "
                    "alert_queue_status --backend aws`"
                ) from exc
            raise
        rows = pq.read_table(io.BytesIO(found["Body"].read())).to_pylist()
        transaction = found.get("Metadata", {}).get(TRANSACTION_METADATA, "")
        return _Found(rows[0], found["ETag"], transaction)

    def _replace(self, found: _Found, changes: dict[str, Any]) -> dict[str, Any]:
        row = found.row
        updated = {**row, **changes, "updated_at": datetime.now(UTC)}
        try:
            put_case(self.s3, self.bucket, updated, found.transaction_id, IfMatch=found.etag)
        except Exception as exc:
            if is_conflict(exc):
                raise CaseError(
                    f"case {row['case_id']} changed while you worked on it; run "
                    f"`fraudops case show {row['case_id']} --backend aws` and try again"
                ) from exc
            raise
        return updated
