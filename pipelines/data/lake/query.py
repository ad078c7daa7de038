"""Read-only SQL over the catalog, in DuckDB or Athena (Presto/Trino) dialect.

``run_query`` is what named queries, reports and dashboards call. Values are
always bound as parameters (``$name`` with a mapping, ``?`` with a sequence),
never pasted into the SQL. The catalog is opened read-only and only ``SELECT``
(incl. ``WITH``, ``DESCRIBE``, ``SHOW``) and ``EXPLAIN`` are accepted, because
a read-only DuckDB connection would still let ``COPY ... TO`` write files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import sqlglot
import sqlglot.errors

from pipelines.core.workspace import Workspace
from pipelines.data.lake import catalog

DIALECTS = ("duckdb", "athena", "auto")
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
Params = Mapping[str, object] | Sequence[object] | None


class QueryError(ValueError):
    """SQL the catalog cannot run: a write, a syntax error, an unknown table or column."""


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


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but a single read statement, naming what was refused.

    Syntax errors surface as ``duckdb.ParserException`` so ``execute`` can try Athena SQL.
    """
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        raise QueryError(
            f"only read-only queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) are allowed; "
            f"this is a {kind.name} statement. The catalog is read-only: write data through "
            "the pipeline commands (e.g. fraudops ingest) instead"
        )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: Params) -> pa.Table:
    check_read_only(con, sql)
    bound = dict(params) if isinstance(params, Mapping) else list(params or [])
    # DuckDB 2.0: relation.to_arrow_table() avoids the extra copy execute() makes.
    return con.sql(sql, params=bound or None).to_arrow_table()


def execute(ws: Workspace, sql: str, params: Params = None, dialect: str = "auto") -> QueryResult:
    """Run one read-only statement; with ``dialect="auto"`` retry as Athena SQL if DuckDB fails.

    Auto mode only falls back when DuckDB cannot parse or bind the statement
    (e.g. ``date_parse``, ``from_iso8601_timestamp``) and the transpiled SQL
    differs; otherwise DuckDB's own error is reported.
    """
    if dialect not in DIALECTS:
        raise QueryError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    try:
        return _execute_in_catalog(ws, sql, params, dialect)
    except duckdb.Error as exc:  # e.g. a conversion error while reading the rows
        raise QueryError(_first_line(exc)) from exc


def _execute_in_catalog(ws: Workspace, sql: str, params: Params, dialect: str) -> QueryResult:
    if not ws.catalog_db.exists():
        catalog.refresh_catalog(ws)
    con = catalog.connect(ws, read_only=True)
    try:
        if dialect == "athena":
            duck_sql = transpile_athena(sql)
            return QueryResult(_run_or_explain(con, duck_sql, params), duck_sql, True)
        try:
            return QueryResult(_execute(con, sql, params), sql, False)
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
            problem = QueryError(_explain(con, exc))
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


def _explain(con: duckdb.DuckDBPyConnection, exc: duckdb.Error) -> str:
    """DuckDB's message, plus the tables that do exist when a table was not found."""
    message = _first_line(exc)
    if isinstance(exc, duckdb.CatalogException):
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1").fetchall()]
        message += (f" (catalog tables: {', '.join(names) or 'none yet'}; zones get their "
                    "table once they hold Parquet files, e.g. after `fraudops ingest`)")
    return message


def _run_or_explain(con: duckdb.DuckDBPyConnection, sql: str, params: Params) -> pa.Table:
    try:
        return _execute(con, sql, params)
    except duckdb.Error as exc:
        raise QueryError(f"{_first_line(exc)} (SQL after Athena transpilation: {sql})") from exc


def run_query(ws: Workspace, sql: str, params: Params = None, dialect: str = "duckdb") -> pa.Table:
    """Run read-only SQL over the catalog and return the rows as an Arrow table.

    ``dialect`` is ``duckdb``, ``athena`` (transpiled with sqlglot) or ``auto``.
    Raises ``QueryError`` for writes and for SQL DuckDB rejects.
    """
    return execute(ws, sql, params, dialect).table
