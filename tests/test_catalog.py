"""The DuckDB catalog over the lake and read-only SQL (DuckDB and Athena dialects)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main as cli_main
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import ingest
from pipelines.data.lake import QueryError, refresh_catalog, register_table, run_query
from pipelines.data.lake.query import execute, transpile_athena

COLUMNS = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "card_number"]


@pytest.fixture
def lake(workspace: Workspace, tmp_path: Path) -> Workspace:
    """A workspace with 4 curated transactions over two days and 1 quarantined row."""
    rows = [
        ["t1", "2024-03-01T10:00:00Z", "alice", "T1", "10.00", "4111111111111111"],
        ["t2", "2024-03-01T11:00:00Z", "bob", "T1", "250.00", "5555555555554444"],
        ["t3", "2024-03-02T09:00:00Z", "alice", "T2", "40.00", "4111111111111111"],
        ["t4", "2024-03-02T12:00:00Z", "carol", "T3", "5.00", ""],
        ["t5", "2024-03-02T12:00:00Z", "carol", "T3", "-5.00", ""],
    ]
    source = tmp_path / "drop.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    ingest(workspace, [source])
    return workspace


def test_ingest_registers_views_for_the_zones_that_exist(lake):
    assert refresh_catalog(lake) == ["quarantine", "transactions"]
    table = run_query(lake, "SELECT dt, count(*) AS n FROM transactions GROUP BY dt ORDER BY dt")
    assert table.to_pylist() == [{"dt": "2024-03-01", "n": 2}, {"dt": "2024-03-02", "n": 2}]
    assert table.schema.field("dt").type == pa.string()  # Athena's partition type, not DATE
    reasons = run_query(lake, "SELECT transaction_id, reason FROM quarantine").to_pylist()
    assert reasons == [{"transaction_id": "t5", "reason": "negative_amount"}]


def test_register_table_adds_a_zone_now_or_when_its_files_appear(lake):
    scored = lake.lake / "scored" / "elsewhere"
    assert register_table(lake, "scored", scored) is False  # nothing to query yet
    with pytest.raises(QueryError, match=r"scored does not exist.*catalog tables: "
                                         r"ingestion_runs, quarantine, transactions"):
        run_query(lake, "SELECT * FROM scored")
    (scored / "dt=2024-03-01").mkdir(parents=True)
    pq.write_table(pa.table({"transaction_id": ["t1"], "score": [0.9]}),
                   scored / "dt=2024-03-01" / "part-0.parquet")

    assert "scored" in refresh_catalog(lake)

    rows = run_query(lake, "SELECT s.transaction_id, s.score, s.dt, t.amount FROM scored s "
                           "JOIN transactions t USING (transaction_id)").to_pylist()
    assert rows == [{"transaction_id": "t1", "score": 0.9, "dt": "2024-03-01", "amount": 10.0}]


@pytest.mark.parametrize("name", ["Bad-Name", "ingestion_runs", "x; drop view transactions"])
def test_register_table_rejects_unsafe_names(lake, tmp_path, name):
    with pytest.raises(ValueError, match="table name"):
        register_table(lake, name, tmp_path)


def test_register_table_refuses_a_zone_outside_the_workspaces_lake(lake, tmp_path):
    with pytest.raises(ValueError, match="outside this workspace's lake"):
        register_table(lake, "scored", tmp_path / "other-workspace" / "scored")


def test_parameters_are_bound_never_interpolated(lake):
    named = run_query(lake, "SELECT transaction_id FROM transactions WHERE customer_id = $who "
                            "AND amount >= $min ORDER BY 1", {"who": "alice", "min": 20})
    assert named.column(0).to_pylist() == ["t3"]
    positional = run_query(lake, "SELECT count(*) AS n FROM transactions WHERE customer_id = ?",
                           ["alice"])
    assert positional.to_pylist() == [{"n": 2}]
    injected = run_query(lake, "SELECT count(*) AS n FROM transactions WHERE customer_id = $who",
                         {"who": "x' OR '1'='1"})
    assert injected.to_pylist() == [{"n": 0}]


@pytest.mark.parametrize("sql", [
    "COPY (SELECT * FROM transactions) TO '/tmp/fraudops-leak.csv'",
    "INSERT INTO ingestion_runs (ingestion_id) VALUES ('fake')",
    "CREATE TABLE stolen AS SELECT * FROM transactions",
    "DROP VIEW transactions",
    "ATTACH '/tmp/other.duckdb' AS other",
    "SELECT 1; DROP VIEW transactions",
    "PRAGMA enable_profiling",
])
def test_statements_that_write_are_rejected_and_change_nothing(lake, sql):
    with pytest.raises(QueryError, match="read-only|one SQL statement"):
        run_query(lake, sql)
    assert run_query(lake, "SELECT count(*) AS n FROM transactions").to_pylist() == [{"n": 4}]
    assert not Path("/tmp/fraudops-leak.csv").exists()


def test_write_rejected_by_the_cli_with_a_clear_error(lake, capsys):
    code = cli_main(["query", "DELETE FROM ingestion_runs", "--workdir", str(lake.root)])
    assert code == 2
    err = capsys.readouterr().err
    assert "only read-only queries" in err and "DELETE" in err


ATHENA_SQL = (
    "SELECT date_format(timestamp, '%Y-%m-%d') AS day, approx_distinct(customer_id) AS customers, "
    "count_if(amount > 100) AS large "
    "FROM transactions WHERE timestamp >= from_iso8601_timestamp('2024-03-02T00:00:00Z') "
    "GROUP BY 1"
)


def test_athena_sql_is_transpiled_explicitly_or_when_duckdb_cannot_run_it(lake):
    assert "STRFTIME" in transpile_athena(ATHENA_SQL).upper()
    expected = [{"day": "2024-03-02", "customers": 2, "large": 0}]
    assert run_query(lake, ATHENA_SQL, dialect="athena").to_pylist() == expected
    with pytest.raises(QueryError):
        run_query(lake, ATHENA_SQL, dialect="duckdb")
    auto = execute(lake, ATHENA_SQL, dialect="auto")
    assert auto.transpiled and auto.table.to_pylist() == expected


def test_athena_sql_with_a_bound_parameter(lake):
    sql = "SELECT count(*) AS n FROM transactions WHERE date_format(timestamp, '%Y-%m-%d') = ?"
    assert run_query(lake, sql, ["2024-03-01"], dialect="athena").to_pylist() == [{"n": 2}]


def test_cli_query_formats_and_params(lake, capsys):
    base = ["query", "SELECT transaction_id, amount FROM transactions WHERE amount > $min "
                     "ORDER BY transaction_id", "--param", "min=30", "--workdir", str(lake.root)]
    assert cli_main([*base, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"transaction_id": "t2", "amount": 250.0}, {"transaction_id": "t3", "amount": 40.0}]
    assert cli_main([*base, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        '"transaction_id","amount"', '"t2",250', '"t3",40']
    assert cli_main([*base, "--format", "table"]) == 0
    assert "2 row(s)" in capsys.readouterr().out
    assert cli_main(["query", ATHENA_SQL, "--athena", "--format", "json",
                     "--workdir", str(lake.root)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["customers"] == 2


def test_cli_rejects_malformed_param(lake, capsys):
    code = cli_main(["query", "SELECT 1", "--param", "nameonly", "--workdir", str(lake.root)])
    assert code == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_ingestion_runs_table_is_queryable(lake):
    runs = run_query(lake, "SELECT rows_read, rows_curated, rows_quarantined, "
                           "quarantine_reasons->>'negative_amount' AS neg FROM ingestion_runs")
    assert runs.to_pylist() == [
        {"rows_read": 5, "rows_curated": 4, "rows_quarantined": 1, "neg": "1"}]
