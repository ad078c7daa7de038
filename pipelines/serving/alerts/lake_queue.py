"""Working cases on AWS: read a case from the lake's ``cases`` table, change it, write it back.

What ``fraudops case show|assign|close --backend aws`` does. The rules are the
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

from pipelines.serving.alerts.cases import CaseError, assignment, closing
from pipelines.serving.alerts.lake_cases import case_key, is_conflict, put_case


@dataclass(frozen=True)
class LakeCaseQueue:
    """The cases of one lake bucket (``s3`` a boto3 S3 client)."""

    s3: Any
    bucket: str

    def show(self, case_id: int) -> dict[str, Any]:
        return self._read(case_id)[0]

    def assign(self, case_id: int, assignee: str) -> dict[str, Any]:
        row, etag = self._read(case_id)
        changes = assignment(case_id, row["status"], row["disposition"], assignee)
        return self._replace(row, etag, changes)

    def close(self, case_id: int, disposition: str, actor: str) -> dict[str, Any]:
        row, etag = self._read(case_id)
        changes = closing(case_id, row["status"], row["disposition"], disposition)
        return self._replace(row, etag, {**changes, "closed_by": actor})

    def _read(self, case_id: int) -> tuple[dict[str, Any], str]:
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
        return rows[0], found["ETag"]

    def _replace(self, row: dict[str, Any], etag: str,
                 changes: dict[str, Any]) -> dict[str, Any]:
        updated = {**row, **changes, "updated_at": datetime.now(UTC)}
        try:
            put_case(self.s3, self.bucket, updated, IfMatch=etag)
        except Exception as exc:
            if is_conflict(exc):
                raise CaseError(
                    f"case {row['case_id']} changed while you worked on it; run "
                    f"`fraudops case show {row['case_id']} --backend aws` and try again"
                ) from exc
            raise
        return updated
