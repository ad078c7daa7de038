"""Every deployment attempt, kept in the workspace registry database.

Successes, rollbacks and skipped (rejected) decisions are all recorded so an
auditor can answer "which model scored transactions on day D, and who let it".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.compliance.audit import Commit, mark_committed
from pipelines.core import stores

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_package_arn TEXT NOT NULL,
    version INTEGER,
    backend TEXT NOT NULL,
    status TEXT NOT NULL,
    endpoint_url TEXT,
    port INTEGER,
    pid INTEGER,
    previous_model_package_arn TEXT,
    message TEXT NOT NULL DEFAULT '',
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
"""

COLUMNS = (
    "model_package_arn",
    "version",
    "backend",
    "status",
    "endpoint_url",
    "port",
    "pid",
    "previous_model_package_arn",
    "message",
    "started_at",
    "finished_at",
)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DeploymentHistory:
    """Append-only table of deployment attempts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with stores.opening(self.path, "model registry"), self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def record(self, commit: Commit | None = None, **fields: Any) -> int:
        """Insert one attempt; unknown fields are a programming error.

        ``commit`` (from ``audit.committing``) is marked in the same transaction,
        so the attempt's audit entry is recovered if the process dies right after.
        """
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown deployment fields: {sorted(unknown)}")
        fields.setdefault("finished_at", utc_now())
        fields.setdefault("started_at", fields["finished_at"])
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self._connect() as conn:
            cursor = conn.execute(
                f"INSERT INTO deployments ({names}) VALUES ({marks})", tuple(fields.values())
            )
            if commit is not None and commit.op_id:
                mark_committed(conn, commit)
            return int(cursor.lastrowid or 0)

    def list(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Attempts, newest first."""
        query = "SELECT * FROM deployments ORDER BY id DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            return [dict(row) for row in conn.execute(query).fetchall()]
