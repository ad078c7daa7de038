"""Execution records of local pipeline runs (SQLite under ``workspace.executions``).

Shaped like SageMaker's ListPipelineExecutions / DescribePipelineExecution /
ListPipelineExecutionSteps responses so callers can treat the local and the
AWS backend alike.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core import stores
from pipelines.model.executor.errors import ExecutionNotFoundError

EXECUTING, SUCCEEDED, FAILED, STOPPED = "Executing", "Succeeded", "Failed", "Stopped"
ARN_PREFIX = "arn:aws:sagemaker:local:000000000000"

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_by TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    last_modified TEXT NOT NULL,
    parameters TEXT NOT NULL,
    definition TEXT NOT NULL,
    failure_reason TEXT,
    owner TEXT  -- host:pid of the process running it, to spot executions it abandoned
);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL REFERENCES executions(execution_id),
    step_name TEXT NOT NULL,
    step_type TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    cache_key TEXT,
    inputs TEXT,
    properties TEXT,
    metadata TEXT,
    output_hashes TEXT,
    failure_reason TEXT,
    log_path TEXT,
    PRIMARY KEY (execution_id, step_name)
);
CREATE INDEX IF NOT EXISTS steps_cache ON steps(step_name, cache_key, status);
"""


def now_iso() -> str:
    """Current UTC time, ISO-8601 (what every record stores)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def pipeline_arn(pipeline_name: str) -> str:
    """Local stand-in for a pipeline ARN (account 000000000000, region ``local``)."""
    return f"{ARN_PREFIX}:pipeline/{pipeline_name.lower()}"


def execution_arn(pipeline_name: str, execution_id: str) -> str:
    """Local stand-in for a pipeline execution ARN."""
    return f"{pipeline_arn(pipeline_name)}/execution/{execution_id}"


class ExecutionStore:
    """Reads and writes execution and step records in one SQLite file."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "executions.sqlite"
        # One connection for the store's life: closing the last connection to a WAL
        # database checkpoints it, which cost more than the executor's own work.
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.row_factory = sqlite3.Row
        history = ("it holds the pipeline executions' history: restore it from a snapshot "
                   "('fraudops backup restore') or move it aside to start a new history")
        with stores.opening(self.path, "execution store", history):
            # Records are rewritten at every step boundary; losing the last one in a power
            # cut is acceptable, an fsync per status change is not.
            self._conn.execute("PRAGMA synchronous=NORMAL")
        with stores.opening(self.path, "execution store", history), self._connect() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                # WAL: readers (``fraudops pipeline list``) never block a running execution.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            # Records written before the owner column existed stay readable.
            columns = {r["name"] for r in conn.execute("PRAGMA table_info(executions)")}
            if "owner" not in columns:
                conn.execute("ALTER TABLE executions ADD COLUMN owner TEXT")

    def close(self) -> None:
        """Release the database connection (also released when the store is collected)."""
        self._conn.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The store's connection inside one transaction (committed, or rolled back)."""
        with self._conn:
            yield self._conn

    # --- executions ------------------------------------------------------------
    def create_execution(
        self,
        execution_id: str,
        pipeline_name: str,
        started_by: str,
        parameters: dict[str, Any],
        definition: str,
        start_time: str,
    ) -> None:
        """Record a new execution in status Executing, owned by this process."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO executions (execution_id, pipeline_name, status, started_by, "
                "start_time, last_modified, parameters, definition, owner) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    execution_id,
                    pipeline_name,
                    EXECUTING,
                    started_by,
                    start_time,
                    start_time,
                    json.dumps(parameters),
                    definition,
                    _owner(),
                ),
            )

    def finish_execution(self, execution_id: str, status: str, failure_reason: str | None) -> None:
        """Record the final status (and why, if it did not succeed)."""
        stamp = now_iso()
        with self._connect() as conn:
            conn.execute(
                "UPDATE executions SET status=?, end_time=?, last_modified=?, failure_reason=? "
                "WHERE execution_id=?",
                (status, stamp, stamp, failure_reason, execution_id),
            )

    def reopen_execution(self, execution_id: str) -> None:
        """Mark a failed/stopped execution as executing again (resume)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE executions SET status=?, end_time=NULL, failure_reason=NULL, "
                "last_modified=?, owner=? WHERE execution_id=?",
                (EXECUTING, now_iso(), _owner(), execution_id),
            )

    def reap_abandoned(self) -> list[str]:
        """Mark Stopped the executions whose process on this host is gone.

        A run killed outright (OOM, closed laptop) never records its end; left
        as Executing it could neither be trusted nor resumed.
        """
        host = socket.gethostname()
        reaped = []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT execution_id, owner FROM executions WHERE status=?", (EXECUTING,)
            ).fetchall()
            for row in rows:
                owner_host, _, pid = str(row["owner"] or "").rpartition(":")
                if owner_host != host or not pid.isdigit() or _process_alive(int(pid)):
                    continue
                reason = (
                    f"the executor process (pid {pid}) ended before the execution finished; "
                    f"resume it with `fraudops pipeline resume {row['execution_id']}`"
                )
                stamp = now_iso()
                conn.execute(
                    "UPDATE executions SET status=?, end_time=?, last_modified=?, "
                    "failure_reason=? WHERE execution_id=?",
                    (STOPPED, stamp, stamp, reason, row["execution_id"]),
                )
                conn.execute(
                    "UPDATE steps SET status=?, end_time=?, failure_reason=? "
                    "WHERE execution_id=? AND status=?",
                    (STOPPED, stamp, reason, row["execution_id"], EXECUTING),
                )
                reaped.append(row["execution_id"])
        return reaped

    def execution_row(self, execution_id: str) -> dict[str, Any]:
        """The raw record of one execution; ``ExecutionNotFoundError`` if unknown."""
        self.reap_abandoned()
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM executions WHERE execution_id=?", (execution_id,)
            ).fetchone()
        if row is None:
            raise ExecutionNotFoundError(
                f"no pipeline execution {execution_id!r} in {self.path.parent}; "
                "list them with `fraudops pipeline list`"
            )
        return dict(row)

    def list_pipeline_executions(
        self, pipeline_name: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Newest first, in the ListPipelineExecutions response shape."""
        self.reap_abandoned()
        query, args = "SELECT * FROM executions", []
        if pipeline_name:
            query, args = query + " WHERE pipeline_name=?", [pipeline_name]
        with self._connect() as conn:
            rows = conn.execute(
                query + " ORDER BY start_time DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return {
            "PipelineExecutionSummaries": [
                {
                    "PipelineExecutionArn": execution_arn(r["pipeline_name"], r["execution_id"]),
                    "PipelineExecutionId": r["execution_id"],
                    "PipelineName": r["pipeline_name"],
                    "StartTime": r["start_time"],
                    "PipelineExecutionStatus": r["status"],
                    "PipelineExecutionFailureReason": r["failure_reason"],
                }
                for r in rows
            ]
        }

    def describe_pipeline_execution(self, execution_id: str) -> dict[str, Any]:
        """The DescribePipelineExecution response shape (plus the resolved parameters)."""
        row = self.execution_row(execution_id)
        return {
            "PipelineArn": pipeline_arn(row["pipeline_name"]),
            "PipelineExecutionArn": execution_arn(row["pipeline_name"], execution_id),
            "PipelineExecutionId": execution_id,
            "PipelineName": row["pipeline_name"],
            "PipelineExecutionStatus": row["status"],
            "FailureReason": row["failure_reason"],
            "CreationTime": row["start_time"],
            "LastModifiedTime": row["last_modified"],
            "EndTime": row["end_time"],
            "CreatedBy": {"UserProfileName": row["started_by"]},
            "PipelineParameters": [
                {"Name": k, "Value": v} for k, v in json.loads(row["parameters"]).items()
            ],
        }

    # --- steps -------------------------------------------------------------------
    def start_step(
        self,
        execution_id: str,
        step_name: str,
        step_type: str,
        inputs: dict[str, Any] | None,
        log_path: str | None = None,
    ) -> None:
        """Insert (or, on resume, restart) a step record in status Executing."""
        with self._connect() as conn:
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE execution_id=?", (execution_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT OR REPLACE INTO steps (execution_id, step_name, step_type, seq, status, "
                "start_time, attempt_count, inputs, log_path) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    execution_id,
                    step_name,
                    step_type,
                    seq,
                    EXECUTING,
                    now_iso(),
                    0,
                    json.dumps(inputs, default=str) if inputs is not None else None,
                    log_path,
                ),
            )

    def update_step(self, execution_id: str, step_name: str, **fields: Any) -> None:
        """Set any step columns; dict/list values are stored as JSON."""
        if not fields:
            return
        encoded = {
            k: json.dumps(v, default=str) if isinstance(v, dict | list) else v
            for k, v in fields.items()
        }
        assignments = ", ".join(f"{column}=?" for column in encoded)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE steps SET {assignments} WHERE execution_id=? AND step_name=?",
                [*encoded.values(), execution_id, step_name],
            )

    def step_rows(self, execution_id: str) -> list[dict[str, Any]]:
        """Step records of one execution in the order they started, JSON decoded."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM steps WHERE execution_id=? ORDER BY seq", (execution_id,)
            ).fetchall()
        return [_decode_step(r) for r in rows]

    def find_cached_step(
        self, pipeline_name: str, step_name: str, cache_key: str, not_before: str
    ) -> dict[str, Any] | None:
        """Newest succeeded run of this step with the same cache key since ``not_before``."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT s.* FROM steps s JOIN executions e USING (execution_id) "
                "WHERE e.pipeline_name=? AND s.step_name=? AND s.cache_key=? AND s.status=? "
                "AND s.end_time >= ? ORDER BY s.end_time DESC LIMIT 1",
                (pipeline_name, step_name, cache_key, SUCCEEDED, not_before),
            ).fetchone()
        return _decode_step(row) if row else None

    def list_pipeline_execution_steps(self, execution_id: str) -> dict[str, Any]:
        """The ListPipelineExecutionSteps response shape, newest step first."""
        row = self.execution_row(execution_id)
        steps = []
        for step in reversed(self.step_rows(execution_id)):
            entry = {
                "StepName": step["step_name"],
                "StepType": step["step_type"],
                "StepStatus": step["status"],
                "StartTime": step["start_time"],
                "EndTime": step["end_time"],
                "AttemptCount": step["attempt_count"],
                "FailureReason": step["failure_reason"],
                "Metadata": step["metadata"] or {},
                "LogPath": step["log_path"],
            }
            source = (step["metadata"] or {}).get("CacheHit")
            if source:
                entry["CacheHitResult"] = {
                    "SourcePipelineExecutionArn": execution_arn(row["pipeline_name"], source)
                }
            steps.append(entry)
        return {"PipelineExecutionSteps": steps}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _decode_step(row: sqlite3.Row) -> dict[str, Any]:
    step = dict(row)
    for column in ("inputs", "properties", "metadata", "output_hashes"):
        if step[column]:
            step[column] = json.loads(step[column])
    return step
