"""The AWS records area: the Object-Lock records bucket (``infra/storage.yaml`` RecordsBucket).

The local records zone keeps reports and the audit trail under the vault's
retain-until locks; on AWS they go to the records bucket, every object version
written with its own Object Lock retention in compliance mode: the retain-until
date is today plus the workspace's retention rule for records
(``pipelines.compliance.policy``, never below the BSA floor), so nobody, root
included, can delete or overwrite that version before then. Every object is
scanned for clear card numbers before it is sent; one found refuses the write.

Layout: ``reports/<name>/<run id>/<file>`` (manifest last) and
``audit/checkpoints/<seq>-<hash prefix>.json`` (the trail's MAC'd head).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.compliance.audit import current_head
from pipelines.compliance.carddata import CardDataError, card_numbers_in_file
from pipelines.compliance.policy import retention_rules
from pipelines.core.workspace import Workspace

LOCK_MODE = "COMPLIANCE"
RECORDS_ZONE = "records"
CHECKPOINTS_PREFIX = "audit/checkpoints"
CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".html": "text/html",
                 ".pdf": "application/pdf"}


@dataclass(frozen=True)
class StoredRecord:
    """One object version written: where, which version, locked until when."""

    key: str
    version_id: str
    retain_until: datetime
    sha256: str


@dataclass(frozen=True)
class RecordsBucket:
    """Writes records to one Object-Lock bucket; ``retain_days`` from the retention policy."""

    s3: Any  # a boto3 S3 client
    bucket: str
    retain_days: int

    @classmethod
    def for_workspace(cls, s3: Any, bucket: str, ws: Workspace) -> RecordsBucket:
        """Retention from ``ws``'s rules for the records zone (five years by default)."""
        return cls(s3, bucket, retention_rules(ws)[RECORDS_ZONE])

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, body: bytes, now: datetime | None = None) -> StoredRecord:
        """Write ``body`` at ``key`` locked in compliance mode; refuse clear card numbers."""
        leaks = card_numbers_in_file(key, body)
        if leaks:
            raise CardDataError(f"{self.uri(key)} would hold clear card numbers "
                                f"({', '.join(leaks[:5])}); nothing was written")
        retain_until = (now or datetime.now(UTC)) + timedelta(days=self.retain_days)
        suffix = key[key.rfind("."):] if "." in key else ""
        response = self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=body,
            ContentType=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            # Object Lock puts must carry a checksum; SHA-256 also lets a reader verify.
            ChecksumAlgorithm="SHA256",
            ObjectLockMode=LOCK_MODE,
            ObjectLockRetainUntilDate=retain_until,
        )
        return StoredRecord(key, response.get("VersionId", ""), retain_until,
                            hashlib.sha256(body).hexdigest())


def checkpoint_key(head: dict[str, Any]) -> str:
    """Where a trail head lands: by sequence number, so a listing reads in order."""
    return f"{CHECKPOINTS_PREFIX}/{int(head['seq']):012d}-{str(head['hash'])[:16]}.json"


def put_checkpoint(records: RecordsBucket, head: dict[str, Any],
                   now: datetime | None = None) -> StoredRecord:
    """Store the audit trail's head (seq, hash, key id, MAC) as a locked checkpoint.

    A checkpoint is an anchor ``audit verify`` can check the trail against: the
    trail must still hold that seq with that hash. Writing the same head again
    adds a version with the same bytes, never a different record at that key.
    """
    body = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    return records.put(checkpoint_key(head), body, now)


def checkpoint_trail(ws: Workspace, records: RecordsBucket) -> StoredRecord:
    """Checkpoint ``ws``'s verified audit trail head into the records bucket."""
    return put_checkpoint(records, current_head(ws))
