"""``fraudops query``: read-only SQL (DuckDB or Athena dialect) over the lake catalog."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.core import csvsafe
from pipelines.core.fileio import atomic_path
from pipelines.data.lake.catalog import CatalogError
from pipelines.data.lake.query import QueryError, execute

_INT = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^-?[0-9]+\.[0-9]+$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="run read-only SQL over the lake (DuckDB, or Athena SQL transpiled)",
        description="Run one read-only SQL statement over the catalog views (transactions, "
        "quarantine, features, scored, ingestion_runs, ...). Values are bound as parameters, "
        "never pasted into the SQL.",
    )
    parser.add_argument("sql", help="one SELECT/WITH/DESCRIBE/SHOW/EXPLAIN statement")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="bind $NAME (repeatable); integers and decimals are bound as "
                        "numbers, anything else as text")
    parser.add_argument("--arg", action="append", default=[], metavar="VALUE",
                        help="bind the next ? placeholder (repeatable, in order)")
    parser.add_argument("--athena", action="store_true",
                        help="the SQL is Athena (Presto/Trino) SQL: transpile it to DuckDB "
                        "(without this flag it is tried as DuckDB first, then as Athena)")
    parser.add_argument("--format", choices=("table", "csv", "json", "parquet"),
                        default="table",
                        help="parquet writes the whole result to --output (types kept)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the result to FILE instead of printing it (needed for "
                        "--format parquet)")
    parser.add_argument("--max-rows", type=int, default=200,
                        help="rows shown in table format (default 200; csv/json print all)")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def coerce(value: str) -> object:
    """Command-line text -> a number when it plainly is one (``001`` stays text)."""
    if _INT.match(value):
        return int(value)
    if _FLOAT.match(value):
        return float(value)
    return value


def parse_params(named: list[str], positional: list[str]) -> dict[str, object] | list[object]:
    if named and positional:
        raise UserError("use either --param NAME=VALUE ($NAME) or --arg VALUE (?), not both")
    if positional:
        return [coerce(v) for v in positional]
    params: dict[str, object] = {}
    for item in named:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param {item!r}: expected NAME=VALUE, e.g. --param day=2024-01-31")
        params[name.strip().lstrip("$")] = coerce(value)
    return params


def run(args: argparse.Namespace) -> int:
    if args.format == "parquet" and args.output is None:
        raise UserError("--format parquet writes a file: add --output FILE.parquet")
    if args.format == "table" and args.output is not None:
        raise UserError("--output writes csv, json or parquet: add --format parquet (or csv, json)")
    ws = open_workspace(args)
    params = parse_params(args.param, args.arg)
    try:
        result = execute(ws, args.sql, params or None, "athena" if args.athena else "auto")
    except (QueryError, CatalogError) as exc:
        raise UserError(str(exc)) from exc
    if result.transpiled and not args.athena:
        print(f"note: ran as Athena SQL, transpiled to DuckDB: {result.sql}", file=sys.stderr)
    if args.output is not None:
        export(result.table, args.format, args.output)
        print(f"{result.table.num_rows:,} row(s) written to {args.output.resolve()}",
              file=sys.stderr)
        return 0
    emit(result.table, args.format, args.max_rows)
    return 0


def export(table: pa.Table, fmt: str, path: Path) -> None:
    """The whole result as a file, written atomically (a failed write leaves none)."""
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd")
        elif fmt == "csv":
            with tmp.open("wb") as handle:
                csvsafe.write_table(table, handle)
        else:
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump(table.to_pylist(), handle, default=str, indent=1)
                handle.write("\n")


def emit(table: pa.Table, fmt: str, max_rows: int) -> None:
    if fmt == "csv":
        # Spreadsheet-safe (formula cells quoted) and lists/structs as JSON text.
        sys.stdout.flush()
        csvsafe.write_table(table, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    if fmt == "json":
        json.dump(table.to_pylist(), sys.stdout, default=str, indent=1)
        sys.stdout.write("\n")
        return
    console = Console()
    view = Table(caption=f"{table.num_rows:,} row(s)" + (
        f", first {max_rows:,} shown" if table.num_rows > max_rows else ""))
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(view)
