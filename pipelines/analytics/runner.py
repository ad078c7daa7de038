"""Run the named Athena queries locally on the DuckDB catalog, with bound parameters.

``run_named_query(ws, "fraud_rate_by_day", {"start_day": "2024-01-01"})`` reads
``pipelines/data/lake/queries/fraud_rate_by_day.sql``, fills in defaults for the
parameters not given, and runs it through ``pipelines.data.lake.run_query(...,
dialect="athena")``: sqlglot transpiles the Athena SQL and binds ``:name`` as
DuckDB's ``$name``, so values are never pasted into the SQL.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipelines.core.workspace import Workspace
from pipelines.data.lake.ddl import athena_tables
from pipelines.data.lake.engine import first_line, lake_engine, open_engine, run_checked
from pipelines.data.lake.named_queries import NamedQuery, get_query, load_library
from pipelines.data.lake.query import QueryError, run_query, transpile_athena

# Tables that only exist once a later stage has written them, and what writes them.
_PRODUCERS = {
    "alerts": ("fraudops athena export", " (after scoring has raised alerts)"),
    "cases": ("fraudops athena export", " (after scoring has raised alerts)"),
    "scored": ("fraudops score", ""),
    "quarantine": ("fraudops ingest", " (the table appears once a row was quarantined)"),
    "transactions": ("fraudops ingest", ""),
    "features": ("fraudops features", ""),
    "labels": ("fraudops feedback", ""),
}


def named_queries() -> dict[str, NamedQuery]:
    """The whole library, by name."""
    return load_library()


def run_named_query(
    ws: Workspace, name: str, params: dict[str, object] | None = None
) -> pa.Table:
    """Run named query ``name`` over the workspace's lake; parameters default as declared.

    Raises ``NamedQueryError`` for an unknown query or parameter and
    ``QueryError`` (naming the command that creates a missing table) for SQL errors.
    """
    query = get_query(name)
    bound = query.bind(params)
    try:
        return as_athena_types(run_query(ws, query.sql, bound, dialect="athena"))
    except QueryError as exc:
        raise QueryError(_explain(name, str(exc))) from exc


def run_as_on_athena(
    ws: Workspace, query: NamedQuery, params: dict[str, object] | None = None,
    required: tuple[str, ...] = ("transactions",),
) -> pa.Table:
    """Run ``query`` over the workspace's lake the way Athena reads the stack's tables.

    A table the Athena DDL declares that has no files here yet (no labels, no
    alerts) reads as empty, as on Athena; the ``required`` ones stay an error
    (``QueryError`` naming the command that creates them).
    """
    empty = {name: spec.schema.empty_table() for name, spec in athena_tables().items()
             if name not in required}
    con, _ = lake_engine(ws, empty)
    try:
        return as_athena_types(run_checked(con, transpile_athena(query.sql), query.bind(params)))
    except QueryError as exc:
        raise QueryError(_explain(query.name, str(exc))) from exc
    except duckdb.Error as exc:
        raise QueryError(_explain(query.name, first_line(exc))) from exc
    finally:
        con.close()


def as_athena_types(table: pa.Table) -> pa.Table:
    """Give results the types Athena returns: DuckDB's ``count_if`` is a HUGEINT
    (Arrow decimal(38, 0)) where Athena's is a bigint, so whole decimals become int64."""
    fields = [
        pa.field(f.name, pa.int64() if f.type.scale == 0 else pa.float64())
        if pa.types.is_decimal(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _explain(name: str, message: str) -> str:
    for table, (command, when) in _PRODUCERS.items():
        if f"Table with name {table} does not exist" in message:
            return (f"named query {name!r} needs table {table!r}, which is not in the lake "
                    f"yet: run `{command}` first{when}")
    return f"named query {name!r}: {message}"


def output_schema(query: NamedQuery) -> pa.Schema:
    """The result columns and types of ``query``, found by running it on empty tables.

    Used for QuickSight's custom-SQL column declarations and to prove, in tests,
    that every query compiles against the schemas the writers use.
    """
    con = open_engine({name: spec.schema.empty_table() for name, spec in athena_tables().items()})
    try:
        sql = transpile_athena(query.sql)
        return as_athena_types(run_checked(con, sql, query.bind() or None)).schema
    finally:
        con.close()
