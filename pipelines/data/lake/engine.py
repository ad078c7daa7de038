"""The confined SQL engine: every query a user can type runs here, and only here.

``fraudops query``, ``fraudops athena query --named``, the notebooks'
``run_query`` and the dashboard's named queries all end in :func:`run_confined`.
The engine is a fresh in-memory DuckDB per query that

* sees the lake's *published tables* only: every zone of this workspace's lake
  that holds Parquet files (``catalog.DEFAULT_ZONES`` plus the catalog's
  registrations), handed to DuckDB as Arrow datasets, plus a copy of the
  catalog's ``ingestion_runs`` table. A registration outside this workspace's
  lake (another workspace, a restored copy's source) is not served;
* cannot touch a file at all: ``enable_external_access`` is off from the moment
  the database opens and no ``allowed_directories``/``allowed_paths`` are given.
  An allowed directory would also be *writable* (``COPY ... TO`` into the lake
  works), so the Parquet files are read by Arrow, outside DuckDB's file system:
  ``COPY``, ``EXPORT``, ``read_text``/``read_csv``/``read_blob``/``glob``/
  ``read_parquet`` of any path, the tokenisation key under ``secrets/``,
  ``ATTACH`` of a file and ``INSTALL`` are all refused by DuckDB itself;
* cannot load or install extensions (auto-install/auto-load off, community and
  unsigned extensions refused, extension repositories forbidden), cannot see the
  caller's Python variables (``python_enable_replacements`` off), spills
  nothing to disk (no temp directory), and has ``lock_configuration`` on, so
  ``SET``/``RESET`` of any of this is refused;
* runs one statement per call, and only a read: the parser
  (``extract_statements``) must classify it as ``SELECT`` (which covers
  ``WITH``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``FROM``, ``VALUES``) or as
  ``EXPLAIN [ANALYZE]`` of such a statement, so ``EXPLAIN ANALYZE COPY ...`` is
  refused before it runs, as are ``PRAGMA``, ``CALL``, ``SET``, ``LOAD``,
  ``ATTACH``, ``CREATE``, ``INSERT`` and the rest.

Two independent guards: a statement the allow-list missed still has no file
to read or write. Refusals are one line, starting with ``refused:``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pipelines.core.workspace import Workspace
from pipelines.data.lake import catalog

Params = Mapping[str, object] | Sequence[object] | None
Relation = pa.Table | ds.Dataset

# Settings fixed when the database opens; ``lock_configuration`` is set last,
# once the tables are registered, so none of them can be changed by a query.
# ``allowed_directories`` and ``allowed_paths`` stay at their empty default.
GUARDS: dict[str, object] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_extension_repositories": "forbidden",
    "python_enable_replacements": False,
    "temp_directory": "",
}
READ_STATEMENTS = "SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, or EXPLAIN [ANALYZE] of one of those"


class QueryError(ValueError):
    """SQL the catalog cannot run: a refused statement, a syntax error, an unknown table."""


def refuse(reason: str) -> QueryError:
    return QueryError(f"refused: {reason}")


@dataclass(frozen=True)
class PublishedTable:
    """A lake zone served to queries: its view name, directory and partitioning."""

    name: str
    path: Path
    hive_partitioning: bool


# --- what the engine may read ------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def published_tables(ws: Workspace) -> tuple[list[PublishedTable], pa.Table, dict[str, str]]:
    """The zones queries may read, the ``ingestion_runs`` rows, and refused registrations.

    Read from the catalog in one short read-only connection, so a running
    ingest holding the catalog only delays a query (``catalog.connect`` retries).
    """
    if not ws.catalog_db.exists():
        catalog.refresh_catalog(ws)
    con = catalog.connect(ws, read_only=True)
    try:
        registered = catalog.registered_tables(con)
        runs = con.sql(f"SELECT * FROM {catalog.RUNS_TABLE}").to_arrow_table()
    finally:
        con.close()
    zones = {name: (zone(ws), True) for name, zone in catalog.DEFAULT_ZONES.items()}
    zones.update(registered)
    lake = ws.lake.resolve()
    tables, refused = [], {}
    for name, (path, hive) in sorted(zones.items()):
        resolved = Path(path).resolve()
        if _inside(resolved, lake):
            tables.append(PublishedTable(name, resolved, hive))
        else:
            refused[name] = f"registered at {resolved}, outside this workspace's lake {lake}"
    return tables, runs, refused


def parquet_files(root: Path) -> list[str]:
    """Every ``*.parquet`` under ``root`` (or ``root`` itself), skipping hidden ``.``/``_``
    entries below it, where writers stage files they have not published yet, and links
    that lead out of ``root``."""
    if root.is_file():
        return [str(root)] if root.suffix == ".parquet" else []
    if not root.is_dir():
        return []
    return sorted(
        str(p) for p in root.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        and _inside(p.resolve(), root)
    )


def _partition_keys(root: Path, files: list[str]) -> list[str]:
    keys: list[str] = []
    for file in files:
        for part in Path(file).relative_to(root).parts[:-1]:
            key, sep, _ = part.partition("=")
            if sep and key not in keys:
                keys.append(key)
    return keys


def lake_dataset(table: PublishedTable) -> ds.Dataset | None:
    """The zone as an Arrow dataset: partition values as text (as Athena types ``dt``),
    columns unioned by name across files; None when the zone holds no Parquet yet."""
    files = parquet_files(table.path)
    if not files:
        return None
    options = ds.FileSystemFactoryOptions()
    if table.hive_partitioning and table.path.is_dir():
        keys = _partition_keys(table.path, files)
        if keys:
            options.partitioning = ds.partitioning(
                pa.schema([(key, pa.string()) for key in keys]), flavor="hive")
            options.partition_base_dir = str(table.path)
    factory = ds.FileSystemDatasetFactory(
        pafs.LocalFileSystem(), files, ds.ParquetFileFormat(), options)
    try:
        schema = factory.inspect(promote_options="permissive", fragments=None)
    except pa.ArrowInvalid as exc:
        raise QueryError(f"table {table.name!r} ({table.path}): its files have "
                         f"incompatible columns: {exc}") from exc
    return factory.finish(schema)


# --- the engine ---------------------------------------------------------------


def open_engine(relations: Mapping[str, Relation]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB serving ``relations`` by name, with every guard on and locked."""
    con = duckdb.connect(":memory:", config=dict(GUARDS))
    try:
        # Session options (not accepted in the start-up config), locked with the rest.
        con.execute("SET TimeZone = 'UTC'")
        # In a Jupyter kernel without ipywidgets DuckDB refuses to touch this setting;
        # it cannot draw a bar there either, so there is nothing to turn off.
        with contextlib.suppress(duckdb.InvalidInputException):
            con.execute("SET enable_progress_bar = false")
        # With external access off DuckDB still allows "<cwd>/:memory:" and its WAL
        # names for an in-memory database; with the local file system disabled
        # nothing at all can be opened by path.
        con.execute("SET disabled_filesystems = 'LocalFileSystem'")
        for name, relation in relations.items():
            con.register(name, relation)
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def lake_engine(
    ws: Workspace, empty: Mapping[str, Relation] | None = None
) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """The engine over ``ws``'s published tables; also returns the refused registrations.

    ``empty`` serves a relation under a name the lake has no files for yet (as
    Athena reads a declared table with no files: no rows, not an error).
    """
    tables, runs, refused = published_tables(ws)
    relations: dict[str, Relation] = {**(empty or {}), catalog.RUNS_TABLE: runs}
    for table in tables:
        dataset = lake_dataset(table)
        if dataset is not None:
            relations[table.name] = dataset
    return open_engine(relations), refused


# --- the statement allow-list ------------------------------------------------


def explained_statement(sql: str) -> str:
    """The statement an ``EXPLAIN`` wraps: the text after the keyword, ``ANALYZE`` and any
    parenthesised options, found with DuckDB's own tokenizer (comments and strings
    are tokens, so neither can hide a parenthesis or a keyword)."""
    tokens = duckdb.tokenize(sql)
    ends = [pos for pos, _ in tokens[1:]] + [len(sql)]
    spans = [(pos, kind, end) for (pos, kind), end in zip(tokens, ends, strict=True)
             if kind != duckdb.token_type.comment]
    depth = 0
    for pos, kind, end in spans[1:]:  # spans[0] is EXPLAIN
        word = sql[pos:end].strip()
        if kind == duckdb.token_type.operator:
            depth += word.count("(") - word.count(")")
            if depth or word.startswith(")"):
                continue
        if depth == 0 and not (kind == duckdb.token_type.keyword and word.upper() == "ANALYZE"):
            return sql[pos:]
    return ""


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one read statement, naming what was refused.

    Syntax errors surface as ``duckdb.ParserException`` so callers can try Athena SQL.
    """
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise refuse(f"expected one SQL statement, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = con.extract_statements(explained_statement(statements[0].query))
        if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
            return
        what = inner[0].type.name if len(inner) == 1 else f"{len(inner)} statements"
        raise refuse(f"only read-only queries ({READ_STATEMENTS}) run on the lake; this "
                     f"EXPLAIN wraps {what}")
    if kind != duckdb.StatementType.SELECT:
        raise refuse(
            f"only read-only queries ({READ_STATEMENTS}) run on the lake; this is a "
            f"{kind.name} statement. Data is written by the pipeline commands "
            "(e.g. fraudops ingest), settings and extensions are fixed"
        )


def run_checked(con: duckdb.DuckDBPyConnection, sql: str, params: Params) -> pa.Table:
    """Check ``sql`` against the allow-list, then run it with ``params`` bound."""
    check_read_only(con, sql)
    bound = dict(params) if isinstance(params, Mapping) else list(params or [])
    try:
        # DuckDB 2.0: relation.to_arrow_table() avoids the extra copy execute() makes.
        return con.sql(sql, params=bound or None).to_arrow_table()
    except duckdb.PermissionException as exc:
        raise refuse(f"queries read only the lake's published tables, never files or "
                     f"settings ({first_line(exc)})") from exc


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]
