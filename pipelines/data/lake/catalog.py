"""A DuckDB catalog over the Parquet lake: one view per zone, like Glue tables for Athena.

The database at ``workspace.catalog_db`` holds only views (name -> glob over a
zone's Parquet files, hive-partitioned so ``dt`` is a column, kept as text as in
Athena), the list of registered zones, and the ``ingestion_runs`` table. Data
stays in the Parquet files, so the catalog can be rebuilt at any time with
``refresh_catalog``.

DuckDB allows one read-write process *or* many read-only ones on a file, so
writes here use short-lived connections and retry while another process holds
the file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from pipelines.core.workspace import Workspace

REGISTRY_TABLE = "_fraudops_tables"
RUNS_TABLE = "ingestion_runs"
LOCK_TIMEOUT_SECONDS = 15.0

# Zones every workspace has; other units add theirs with ``register_table``.
DEFAULT_ZONES: dict[str, Callable[[Workspace], Path]] = {
    "transactions": lambda ws: ws.curated,
    "quarantine": lambda ws: ws.quarantine,
    "features": lambda ws: ws.features,
    "scored": lambda ws: ws.scored,
    "labels": lambda ws: ws.labels,
}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

_RUNS_DDL = f"""
CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (
    ingestion_id VARCHAR PRIMARY KEY,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    rows_read BIGINT,
    rows_curated BIGINT,
    rows_quarantined BIGINT,
    duplicates_skipped BIGINT,
    duplicates_in_batch BIGINT,
    duplicates_seen_before BIGINT,
    duplicates_quarantined BIGINT,
    quarantine_reasons JSON,
    sources JSON,
    partitions JSON,
    token_key_id VARCHAR,
    balanced BOOLEAN
)
"""
_RUN_COLUMNS = (
    "ingestion_id", "started_at", "finished_at", "rows_read", "rows_curated",
    "rows_quarantined", "duplicates_skipped", "duplicates_in_batch", "duplicates_seen_before",
    "duplicates_quarantined", "quarantine_reasons", "sources", "partitions", "token_key_id",
    "balanced",
)
_JSON_COLUMNS = {"quarantine_reasons", "sources", "partitions"}


class CatalogBusyError(RuntimeError):
    """Another process kept the catalog file locked for longer than the timeout."""


def connect(ws: Workspace, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the catalog (created on first write), retrying while another process holds it."""
    if read_only and not ws.catalog_db.exists():
        _init(ws)
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            con = duckdb.connect(str(ws.catalog_db), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise CatalogBusyError(
                    f"catalog {ws.catalog_db} is locked by another process: {exc}"
                ) from exc
            time.sleep(0.1)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _init(ws: Workspace) -> None:
    con = connect(ws, read_only=False)
    con.close()


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {REGISTRY_TABLE} "
        "(name VARCHAR PRIMARY KEY, path VARCHAR NOT NULL, hive_partitioning BOOLEAN)"
    )
    con.execute(_RUNS_DDL)


def parquet_glob(path: Path) -> str:
    """A directory means every Parquet file below it; a file or glob is used as given."""
    text = str(path)
    if "*" in text or text.endswith(".parquet"):
        return text
    return f"{text.rstrip('/')}/**/*.parquet"


def has_parquet(path: Path) -> bool:
    glob = parquet_glob(path)
    if "*" not in glob:
        return Path(glob).is_file()
    base, _, pattern = glob.partition("/**/")
    root = Path(base)
    return root.is_dir() and any(root.rglob(pattern or "*.parquet"))


def _view_sql(name: str, path: Path, hive_partitioning: bool) -> str:
    glob = parquet_glob(path).replace("'", "''")
    hive = "true" if hive_partitioning else "false"
    return (
        f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet(\'{glob}\', '
        f"hive_partitioning = {hive}, hive_types_autocast = false, union_by_name = true)"
    )


def _check_name(name: str) -> None:
    if not _IDENTIFIER.match(name) or name in (REGISTRY_TABLE, RUNS_TABLE):
        raise ValueError(
            f"table name {name!r} must be lower-case letters, digits and _ "
            f"(and not {REGISTRY_TABLE} or {RUNS_TABLE})"
        )


def register_table(
    ws: Workspace, name: str, path: str | Path, hive_partitioning: bool = True
) -> bool:
    """Register (or move) a zone as view ``name``; return whether it has data to query yet.

    Other units call this after writing a zone (e.g. ``register_table(ws,
    "scored", ws.scored)``). The registration is kept, so a zone that has no
    files yet gets its view on the next refresh once files appear.
    """
    _check_name(name)
    resolved = Path(path).expanduser().resolve()
    lake = ws.lake.resolve()
    if resolved != lake and lake not in resolved.parents:
        # Queries read only this workspace's lake (pipelines.data.lake.engine).
        raise ValueError(f"table {name!r}: {resolved} is outside this workspace's lake "
                         f"{lake}; write the table under the lake and register it there")
    con = connect(ws, read_only=False)
    try:
        _ensure_schema(con)
        con.execute(
            f"INSERT OR REPLACE INTO {REGISTRY_TABLE} VALUES (?, ?, ?)",
            [name, str(resolved), hive_partitioning],
        )
        return _sync_view(con, name, resolved, hive_partitioning)
    finally:
        con.close()


def _sync_view(con: duckdb.DuckDBPyConnection, name: str, path: Path, hive: bool) -> bool:
    if has_parquet(path):
        con.execute(_view_sql(name, path, hive))
        return True
    con.execute(f'DROP VIEW IF EXISTS "{name}"')  # a view over no files fails on every query
    return False


def registered_tables(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[Path, bool]]:
    rows = con.execute(f"SELECT name, path, hive_partitioning FROM {REGISTRY_TABLE}").fetchall()
    return {name: (Path(path), bool(hive)) for name, path, hive in rows}


def refresh_catalog(ws: Workspace) -> list[str]:
    """(Re)create the view of every known zone that has Parquet files; return their names."""
    con = connect(ws, read_only=False)
    try:
        _ensure_schema(con)
        tables = {name: (zone(ws), True) for name, zone in DEFAULT_ZONES.items()}
        tables.update(registered_tables(con))
        return sorted(
            name for name, (path, hive) in tables.items() if _sync_view(con, name, path, hive)
        )
    finally:
        con.close()


def sync_ingestion_runs(ws: Workspace) -> int:
    """Add every run log under ``logs/ingest`` not yet in ``ingestion_runs``; return how many.

    The JSON logs are the source of truth, so a run whose process died after
    committing is still recorded the next time this runs.
    """
    log_dir = ws.logs / "ingest"
    logs = sorted(log_dir.glob("ing-*.json")) if log_dir.is_dir() else []
    con = connect(ws, read_only=False)
    try:
        _ensure_schema(con)
        known = {row[0] for row in con.execute(f"SELECT ingestion_id FROM {RUNS_TABLE}").fetchall()}
        added = 0
        for log in logs:
            report = json.loads(log.read_text(encoding="utf-8"))
            if report["ingestion_id"] in known:
                continue
            values = [
                json.dumps(report.get(c)) if c in _JSON_COLUMNS else report.get(c)
                for c in _RUN_COLUMNS
            ]
            placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
            con.execute(
                f"INSERT INTO {RUNS_TABLE} ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders})",
                values,
            )
            added += 1
        return added
    finally:
        con.close()
