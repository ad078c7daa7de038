"""The confined query engine: every escape an attacker or a careless user tried is refused.

Each statement below was run against ``fraudops query`` (issue 11): it wrote a
forged Parquet file into a curated partition, or read the tokenisation key,
``/etc/passwd`` or another workspace's lake. Every one must now be refused with
a one-line error, and leave the lake as it was, while ordinary analytical SQL and
Athena SQL still run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipelines.analytics.runner import run_named_query
from pipelines.cli.main import main as cli_main
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import ingest
from pipelines.data.lake.engine import explained_statement, lake_engine
from pipelines.data.lake.query import QueryError, run_query

ROWS = [
    ["t1", "2024-03-01T10:00:00Z", "alice", "T1", "10.00", "4111111111111111", "1"],
    ["t2", "2024-03-01T11:00:00Z", "bob", "T1", "250.00", "5555555555554444", "0"],
    ["t3", "2024-03-02T09:00:00Z", "alice", "T2", "40.00", "", "0"],
]
COLUMNS = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "card_number",
           "is_fraud"]


def _ingested(root: Path, drop: Path) -> Workspace:
    ws = Workspace.open(root)
    with drop.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(ROWS)
    ingest(ws, [drop])
    return ws


@pytest.fixture
def lake(tmp_path: Path) -> Workspace:
    return _ingested(tmp_path / "ws", tmp_path / "drop.csv")


@pytest.fixture
def other(tmp_path: Path) -> Workspace:
    """A second workspace on the same machine."""
    return _ingested(tmp_path / "other", tmp_path / "other-drop.csv")


def lake_files(ws: Workspace) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(ws.lake.rglob("*")) if p.is_file()}


def refused(ws: Workspace, sql: str, dialect: str = "duckdb") -> str:
    before = lake_files(ws)
    with pytest.raises(QueryError) as caught:
        run_query(ws, sql, dialect=dialect)
    message = str(caught.value)
    assert "\n" not in message, message
    assert lake_files(ws) == before, "a refused statement changed the lake"
    assert run_query(ws, "SELECT count(*) AS n FROM transactions").to_pylist() == [{"n": 3}]
    return message


def key_file(ws: Workspace) -> Path:
    keys = [p for p in ws.secrets.rglob("*") if p.is_file()]
    assert keys, "ingest should have created the tokenisation key"
    return keys[0]


def test_copy_into_a_curated_partition_is_refused(lake):
    target = next(lake.curated.glob("dt=*")) / "part-forged.parquet"
    for sql in (
        f"COPY (SELECT * FROM transactions) TO '{target}' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY (SELECT * FROM transactions) TO '{target}' (FORMAT parquet)",
        f"EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1 AS a) TO '{target}'",
        f"EXPLAIN ANALYZE (FORMAT json) COPY (SELECT 1 AS a) TO '{target}'",
        f"/* ( */ EXPLAIN ANALYZE -- )\n COPY (SELECT 1 AS a) TO '{target}'",
        f"EXPORT DATABASE '{lake.lake / 'export'}'",
    ):
        assert refused(lake, sql).startswith("refused:")
        assert not target.exists()


@pytest.mark.parametrize("function", ["read_text", "read_blob", "read_csv", "glob"])
def test_files_outside_the_tables_cannot_be_read(lake, function):
    for path in ("/etc/passwd", key_file(lake), lake.catalog_db, lake.root / "**"):
        message = refused(lake, f"SELECT * FROM {function}('{path}')")
        assert "published tables" in message


def test_parquet_of_another_workspace_or_of_this_lake_is_read_only_through_tables(lake, other):
    for path in (other.curated, lake.curated):
        assert "published tables" in refused(
            lake, f"SELECT * FROM read_parquet('{path}/**/*.parquet')")
    # The tables themselves are this workspace's rows only.
    rows = run_query(lake, "SELECT count(*) AS n FROM transactions").to_pylist()
    assert rows == [{"n": 3}]


def test_a_link_in_the_lake_to_another_workspace_is_not_followed(lake, other):
    foreign = next(other.curated.rglob("*.parquet"))
    (next(lake.curated.glob("dt=*")) / "part-link.parquet").symlink_to(foreign)
    assert run_query(lake, "SELECT count(*) AS n FROM transactions").to_pylist() == [{"n": 3}]


def test_the_tokenisation_key_never_comes_back(lake):
    key = key_file(lake).read_text().strip()
    for sql in (f"SELECT * FROM read_text('{key_file(lake)}')",
                f"SELECT * FROM read_csv('{key_file(lake)}', header = false)",
                f"SELECT content FROM read_text('{lake.root}/secrets/*')"):
        assert key not in refused(lake, sql)


@pytest.mark.parametrize("sql", [
    "INSTALL httpfs",
    "LOAD json",
    "FORCE INSTALL httpfs",
    "ATTACH ':memory:' AS scratch",
    "ATTACH '{catalog}' AS cat (READ_ONLY)",
    "DETACH memory",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET allowed_directories = ['/']",
    "SET allowed_paths = ['/etc/passwd']",
    "SET lock_configuration = false",
    "SET autoload_known_extensions = true",
    "SET autoinstall_known_extensions = true",
    "SET GLOBAL enable_external_access = true",
    "SET python_enable_replacements = true",
    "SET VARIABLE x = 1",
    "PRAGMA enable_profiling",
    "PRAGMA version",
    "CALL pragma_version()",
    "CHECKPOINT",
    "CREATE TABLE stolen AS SELECT * FROM transactions",
    "CREATE OR REPLACE VIEW transactions AS SELECT 1 AS forged",
    "INSERT INTO ingestion_runs (ingestion_id) VALUES ('forged')",
    "DROP VIEW transactions",
    "USE memory",
    "BEGIN TRANSACTION",
    "SELECT 1; SELECT 2",
])
def test_statements_outside_the_allow_list_are_refused_with_their_type(lake, sql):
    message = refused(lake, sql.format(catalog=lake.catalog_db))
    assert message.startswith("refused:") and ("read-only" in message or "statement" in message)


def test_the_engine_guards_hold_without_the_allow_list(lake):
    """Defence in depth: the settings alone stop file access and stay locked."""
    con, _ = lake_engine(lake)
    target = next(lake.curated.glob("dt=*")) / "forged.parquet"
    try:
        for sql in (f"COPY (SELECT 1 AS a) TO '{target}'",
                    "COPY (SELECT 1 AS a) TO ':memory:'",  # an in-memory database's own name
                    f"SELECT * FROM read_text('{key_file(lake)}')",
                    "INSTALL httpfs", f"ATTACH '{lake.catalog_db}' AS cat"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        for sql in ("SET enable_external_access = true", "SET lock_configuration = false",
                    "RESET allowed_directories", "SET autoload_known_extensions = true",
                    "SET disabled_filesystems = ''"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                con.execute(sql)
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access',"
            " 'lock_configuration', 'allowed_directories', 'autoload_known_extensions',"
            " 'autoinstall_known_extensions', 'allow_community_extensions')").fetchall())
        assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                            "allowed_directories": "[]", "autoload_known_extensions": "false",
                            "autoinstall_known_extensions": "false",
                            "allow_community_extensions": "false"}
    finally:
        con.close()
    assert not target.exists()


def test_the_callers_python_variables_are_not_tables(lake):
    secret_frame = pa.table({"pan": ["4111111111111111"]})  # noqa: F841 (the bait)
    assert "secret_frame does not exist" in str(pytest.raises(
        QueryError, run_query, lake, "SELECT * FROM secret_frame").value)


def test_analytical_sql_still_runs(lake):
    sql = ("WITH daily AS (SELECT dt, count(*) AS n, sum(amount) AS total, "
           "avg(is_fraud) AS rate FROM transactions GROUP BY dt) "
           "SELECT dt, n, total, rate, sum(n) OVER (ORDER BY dt) AS running FROM daily "
           "ORDER BY dt")
    assert run_query(lake, sql).to_pylist() == [
        {"dt": "2024-03-01", "n": 2, "total": 260.0, "rate": 0.5, "running": 2},
        {"dt": "2024-03-02", "n": 1, "total": 40.0, "rate": 0.0, "running": 3},
    ]
    assert run_query(lake, "DESCRIBE transactions").num_rows > 5
    assert run_query(lake, "SHOW TABLES").column("name").to_pylist() == [
        "ingestion_runs", "transactions"]
    assert run_query(lake, "SUMMARIZE transactions").num_rows > 5
    assert run_query(lake, "FROM transactions SELECT max(amount) AS m").to_pylist() == [
        {"m": 250.0}]
    assert run_query(lake, "EXPLAIN SELECT * FROM transactions").num_rows == 1
    assert run_query(lake, "EXPLAIN ANALYZE SELECT count(*) FROM transactions").num_rows == 1
    assert run_query(lake, "SELECT rows_curated FROM ingestion_runs").to_pylist() == [
        {"rows_curated": 3}]


def test_athena_sql_still_runs_and_is_confined_too(lake):
    sql = ("SELECT date_format(timestamp, '%Y-%m-%d') AS day, count_if(amount > 100) AS large "
           "FROM transactions WHERE timestamp >= from_iso8601_timestamp('2024-03-01T00:00:00Z')"
           " GROUP BY 1 ORDER BY 1")
    assert run_query(lake, sql, dialect="athena").to_pylist() == [
        {"day": "2024-03-01", "large": 1}, {"day": "2024-03-02", "large": 0}]
    assert refused(lake, "SELECT * FROM read_text('/etc/passwd')", dialect="athena")
    assert refused(lake, "SELECT * FROM read_text('/etc/passwd')", dialect="auto")


def test_named_queries_run_in_the_confined_engine(lake):
    rows = run_named_query(lake, "fraud_rate_by_day", {"start_day": "2024-03-01"}).to_pylist()
    assert [(r["day"], r["transactions"], r["frauds"]) for r in rows] == [
        ("2024-03-01", 2, 1), ("2024-03-02", 1, 0)]


def test_the_cli_refuses_in_one_line(lake, capsys):
    target = next(lake.curated.glob("dt=*")) / "forged.parquet"
    code = cli_main(["query", f"EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{target}'",
                     "--workdir", str(lake.root)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused:" in err and "EXPLAIN wraps COPY" in err
    assert not target.exists()


@pytest.mark.parametrize(("sql", "inner"), [
    ("EXPLAIN SELECT 1", "SELECT 1"),
    ("explain analyze select 1", "select 1"),
    ("EXPLAIN (FORMAT json) SELECT 1", "SELECT 1"),
    ("EXPLAIN (FORMAT 'json(') ANALYZE SELECT 1", "SELECT 1"),
    ("/* x */ EXPLAIN /* ( */ ANALYZE -- )\n COPY t TO 'f'", "COPY t TO 'f'"),
])
def test_explained_statement_is_found_by_the_tokenizer(sql, inner):
    assert explained_statement(sql) == inner
