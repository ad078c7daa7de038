"""A DuckDB catalog over the Parquet lake: one view per zone, like Glue tables for Athena.

The database at ``workspace.catalog_db`` holds only views (name -> glob over a
zone's Parquet files, hive-partitioned so ``dt`` is a column, kept as text as in
Athena), the list of registered zones, and the ``ingestion_runs`` table. Data
stays in the Parquet files, so the catalog can be rebuilt at any time with
``refresh_catalog``. Registered paths are stored relative to the workspace root
and ``connect`` rebuilds the views whenever the catalog is opened under another
root: a restored snapshot is its own workspace, never a window on the original.

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
META_TABLE = "_fraudops_meta"  # the root the views were built for
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


class CatalogError(RuntimeError):
    """The catalog cannot be opened now; the lake's data is not affected."""


class CatalogBusyError(CatalogError):
    """Another process kept the catalog file locked for longer than the timeout."""


class CatalogUnreadableError(CatalogError):
    """The catalog file is damaged (it holds only views and the ingestion log: rebuildable)."""


def connect(ws: Workspace, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the catalog (created on first write), retrying while another process holds it.

    A catalog last written under another root (a restored backup, a moved
    workspace) is first re-rooted here (``_rebase``), so it never reads another
    workspace's lake.
    """
    if read_only and not ws.catalog_db.exists():
        _init(ws)
    con = _open(ws, read_only)
    if _root_of(con) != str(ws.root):
        con.close()
        writer = _open(ws, read_only=False)
        try:
            _rebase(ws, writer)
        finally:
            writer.close()
        con = _open(ws, read_only)
    return con


def _open(ws: Workspace, read_only: bool) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            con = duckdb.connect(str(ws.catalog_db), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise CatalogUnreadableError(
                    f"catalog {ws.catalog_db} is unreadable ({exc}); it holds only views over "
                    "the lake and the ingestion log, so it can be rebuilt: move it aside and "
                    "run the command again (the next ingest records the runs again)"
                ) from exc
            if time.monotonic() > deadline:
                raise CatalogBusyError(
                    f"catalog {ws.catalog_db} is locked by another process: {exc}"
                ) from exc
            time.sleep(0.1)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _init(ws: Workspace) -> None:
    con = connect(ws, read_only=False)
    con.close()


def _root_of(con: duckdb.DuckDBPyConnection) -> str | None:
    """The workspace root the views were last built for (None: never recorded)."""
    try:
        row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'root'").fetchall()
    except duckdb.CatalogException:
        return None
    return row[0][0] if row else None


def _stored_path(ws: Workspace, path: Path, old_root: str | None = None) -> str:
    """A registered path as kept in the catalog: relative to the workspace root.

    Paths under ``old_root`` (the root the catalog was last used under) are
    re-rooted; so are absolute ``.../s3/...`` paths of catalogs written before
    paths were stored relative, when the same path exists in this workspace.
    """
    if not path.is_absolute():
        return path.as_posix()
    for root in (ws.root, Path(old_root) if old_root else None):
        if root is not None and (path == root or root in path.parents):
            return path.relative_to(root).as_posix()
    if old_root is None and "s3" in path.parts:
        index = len(path.parts) - 1 - path.parts[::-1].index("s3")
        candidate = Path(*path.parts[index:])
        if (ws.root / candidate).exists():
            return candidate.as_posix()
    return str(path)


def _rebase(ws: Workspace, con: duckdb.DuckDBPyConnection) -> None:
    """Store registered paths relative to ``ws``, rebuild every view for its root, record it."""
    _ensure_schema(con)
    old_root = _root_of(con)
    rows = con.execute(f"SELECT name, path FROM {REGISTRY_TABLE}").fetchall()
    for name, stored in rows:
        portable = _stored_path(ws, Path(stored), old_root)
        if portable != stored:
            con.execute(f"UPDATE {REGISTRY_TABLE} SET path = ? WHERE name = ?", [portable, name])
    con.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES ('root', ?)", [str(ws.root)])
    _refresh_views(ws, con)


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)")
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
            [name, _stored_path(ws, resolved), hive_partitioning],
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
    """Registered zones with absolute paths (stored relative to the root ``connect`` checked)."""
    root = Path(_root_of(con) or ".")
    rows = con.execute(f"SELECT name, path, hive_partitioning FROM {REGISTRY_TABLE}").fetchall()
    return {name: (root / path, bool(hive)) for name, path, hive in rows}


def refresh_catalog(ws: Workspace) -> list[str]:
    """(Re)create the view of every known zone that has Parquet files; return their names."""
    con = connect(ws, read_only=False)
    try:
        _ensure_schema(con)
        return _refresh_views(ws, con)
    finally:
        con.close()


def _refresh_views(ws: Workspace, con: duckdb.DuckDBPyConnection) -> list[str]:
    tables = {name: (zone(ws), True) for name, zone in DEFAULT_ZONES.items()}
    tables.update(registered_tables(con))
    return sorted(
        name for name, (path, hive) in tables.items() if _sync_view(con, name, path, hive)
    )


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
