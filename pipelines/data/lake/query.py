"""Read-only SQL over the lake, in DuckDB or Athena (Presto/Trino) dialect.

``run_query`` is what named queries, reports, dashboards, notebooks and
``fraudops query`` call. Values are always bound as parameters (``$name`` with a
mapping, ``?`` with a sequence), never pasted into the SQL. Every statement runs
in the confined engine of ``pipelines.data.lake.engine``: the lake's published
tables only, no file access, no extensions, settings locked, and only a single
read statement (``SELECT``-like, or ``EXPLAIN`` of one).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import sqlglot
import sqlglot.errors

from pipelines.core.workspace import Workspace
from pipelines.data.lake.engine import (
    Params,
    QueryError,
    check_read_only,
    first_line,
    lake_engine,
    run_checked,
)

__all__ = ["DIALECTS", "Params", "QueryError", "QueryResult", "check_read_only", "execute",
           "run_query", "transpile_athena"]

DIALECTS = ("duckdb", "athena", "auto")


@dataclass(frozen=True)
class QueryResult:
    """The rows and the SQL that actually ran (after any Athena transpilation)."""

    table: pa.Table
    sql: str
    transpiled: bool


def transpile_athena(sql: str) -> str:
    """Athena (Presto/Trino) SQL -> DuckDB SQL; raise ``QueryError`` if it cannot be parsed."""
    try:
        statements = sqlglot.transpile(sql, read="athena", write="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise QueryError(f"cannot parse the SQL as Athena SQL: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}")
    return statements[0]


def execute(ws: Workspace, sql: str, params: Params = None, dialect: str = "auto") -> QueryResult:
    """Run one read-only statement; with ``dialect="auto"`` retry as Athena SQL if DuckDB fails.

    Auto mode only falls back when DuckDB cannot parse or bind the statement
    (e.g. ``date_parse``, ``from_iso8601_timestamp``) and the transpiled SQL
    differs; otherwise DuckDB's own error is reported.
    """
    if dialect not in DIALECTS:
        raise QueryError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    try:
        return _execute_confined(ws, sql, params, dialect)
    except duckdb.Error as exc:  # e.g. a conversion error while reading the rows
        raise QueryError(first_line(exc)) from exc


def _execute_confined(ws: Workspace, sql: str, params: Params, dialect: str) -> QueryResult:
    con, refused = lake_engine(ws)
    try:
        if dialect == "athena":
            duck_sql = transpile_athena(sql)
            return QueryResult(_run_or_explain(con, duck_sql, params), duck_sql, True)
        try:
            return QueryResult(run_checked(con, sql, params), sql, False)
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
            problem = QueryError(_explain(con, exc, refused))
            if dialect == "duckdb":
                raise problem from exc
            try:
                duck_sql = transpile_athena(sql)
            except QueryError:
                raise problem from exc
            if duck_sql.strip() == sql.strip():
                raise problem from exc
            return QueryResult(_run_or_explain(con, duck_sql, params), duck_sql, True)
    finally:
        con.close()


def _explain(con: duckdb.DuckDBPyConnection, exc: duckdb.Error, refused: dict[str, str]) -> str:
    """DuckDB's message, plus the tables that do exist when a table was not found."""
    message = first_line(exc)
    if isinstance(exc, duckdb.CatalogException):
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1").fetchall()]
        message += (f" (catalog tables: {', '.join(names) or 'none yet'}; zones get their "
                    "table once they hold Parquet files, e.g. after `fraudops ingest`)")
        message += "".join(f"; {name} is not served: {why}" for name, why in refused.items())
    return message


def _run_or_explain(con: duckdb.DuckDBPyConnection, sql: str, params: Params) -> pa.Table:
    try:
        return run_checked(con, sql, params)
    except duckdb.Error as exc:
        raise QueryError(f"{first_line(exc)} (SQL after Athena transpilation: {sql})") from exc


def run_query(ws: Workspace, sql: str, params: Params = None, dialect: str = "duckdb") -> pa.Table:
    """Run read-only SQL over the catalog and return the rows as an Arrow table.

    ``dialect`` is ``duckdb``, ``athena`` (transpiled with sqlglot) or ``auto``.
    Raises ``QueryError`` for writes and for SQL DuckDB rejects.
    """
    return execute(ws, sql, params, dialect).table
