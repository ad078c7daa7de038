"""Every named Athena query runs locally and returns the known answer on a crafted lake."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.analytics.exports import ALERTS_SCHEMA, CASES_SCHEMA, alerts_dir, export_queue
from pipelines.analytics.runner import output_schema, run_named_query
from pipelines.cli.main import main as cli_main
from pipelines.core.schema import CURATED_SCHEMA, QUARANTINE_SCHEMA
from pipelines.core.workspace import Workspace
from pipelines.data.lake.catalog import refresh_catalog
from pipelines.data.lake.named_queries import (
    NamedQueryError,
    get_query,
    load_library,
    parse_query_file,
)
from pipelines.data.lake.query import QueryError
from pipelines.data.lake.tables import SCORED_SCHEMA
from pipelines.serving.alerts.cases import CaseQueue

D1, D2 = "2024-03-01", "2024-03-02"
# id, day, terminal, channel, merchant category, is_fraud, amount
TRANSACTIONS = [
    ("t1", D1, "T1", "ecommerce", "5411", 1, 30.0),
    ("t2", D1, "T1", "ecommerce", "5411", 1, 40.0),
    ("t3", D1, "T1", "ecommerce", "5411", 0, 10.0),
    ("t4", D1, "T1", "ecommerce", "5411", 0, 20.0),
    ("t5", D1, "T2", "card_present", "5812", 0, 5.0),
    ("t6", D1, "T2", "card_present", "5812", 0, 5.0),
    ("t7", D2, "T1", "ecommerce", "5411", 1, 100.0),
    ("t8", D2, "T3", "atm", None, 0, 50.0),
    ("t9", D2, "T3", None, None, None, 60.0),  # no channel, not labelled yet
    ("t10", D2, "T3", "atm", None, 1, 70.0),
]
# day, model version, scores (alert at >= 0.5)
SCORES = [(D1, 1, [0.01, 0.04, 0.5, 0.97, 1.0]), (D2, 2, [0.2, 0.8])]
# day, reason, source file
QUARANTINED = [
    (D1, "bad_amount", "a.csv"), (D1, "bad_amount", "b.csv"), (D1, "bad_timestamp", "a.csv"),
    (D2, "bad_amount", "c.csv"),
]


def _ts(day: str, second: int = 0) -> datetime:
    return datetime.fromisoformat(f"{day}T10:00:{second:02d}+00:00")


def _write(table: pa.Table, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _curated(ws) -> None:
    for day in (D1, D2):
        rows = [
            {"transaction_id": t, "timestamp": _ts(d, i), "customer_id": f"C{i}",
             "terminal_id": term, "amount": amount, "channel": channel,
             "merchant_category": mcc, "is_fraud": fraud, "dt": d}
            for i, (t, d, term, channel, mcc, fraud, amount) in enumerate(TRANSACTIONS)
            if d == day
        ]
        _write(pa.Table.from_pylist(rows, schema=CURATED_SCHEMA),
               ws.curated / f"dt={day}" / "part-1.parquet")


def _scored(ws) -> None:
    for day, version, scores in SCORES:
        rows = [
            {"transaction_id": f"s{day}{i}", "customer_id": "C", "terminal_id": "T",
             "timestamp": _ts(day, i), "amount": 1.0, "score": score,
             "decision": "alert" if score >= 0.5 else "clear", "model_version": version,
             "scored_at": _ts(day)}
            for i, score in enumerate(scores)
        ]
        _write(pa.Table.from_pylist(rows, schema=SCORED_SCHEMA),
               ws.scored / f"dt={day}" / "part-00000.parquet")


def _quarantine(ws) -> None:
    rows = [
        {"transaction_id": f"q{i}", "reason": reason, "source_file": source, "source_line": i,
         "ingestion_id": "ing-1", "dt": day}
        for i, (day, reason, source) in enumerate(QUARANTINED)
    ]
    for day in (D1, D2):
        _write(pa.Table.from_pylist([r for r in rows if r["dt"] == day], schema=QUARANTINE_SCHEMA),
               ws.quarantine / f"dt={day}" / "part-1.parquet")


def _alert(tx: str, card: str, day: str, score: float, severity: str) -> dict:
    return {"transaction_id": tx, "card_id": card, "terminal_id": "T1", "amount": 10.0,
            "tx_timestamp": _ts(day).isoformat(), "score": score, "severity": severity,
            "model_version": "1", "reasons": ["high terminal risk"]}


def _queue(ws) -> None:
    queue = CaseQueue(ws.cases_db)
    first = queue.add_alert(_alert("t1", "C1", D1, 0.97, "high"))
    queue.add_alert(_alert("t2", "C1", D1, 0.7, "medium"), grouped_into=first)
    queue.add_alert(_alert("t7", "C2", D2, 0.6, "medium"))
    queue.add_alert(_alert("t10", "C3", D2, 0.95, "high"))
    cases = {c["transaction_id"]: c["case_id"] for c in queue.list_alerts()}
    queue.close(cases["t1"], "confirmed_fraud", actor="ana")
    queue.close(cases["t7"], "false_positive", actor="ana")
    queue.assign(cases["t10"], "bo", actor="ana")


def build_crafted_lake(ws):
    """Curated, scored, quarantine and queue data with hand-computed answers (also for
    the dashboard test)."""
    _curated(ws)
    _scored(ws)
    _quarantine(ws)
    _queue(ws)
    refresh_catalog(ws)
    export_queue(ws)
    return ws


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Shared by the read-only tests; a test that changes the queue builds its own."""
    return build_crafted_lake(Workspace.open(tmp_path_factory.mktemp("lake") / "ws"))


def rows(ws, name, **params):
    return run_named_query(ws, name, params).to_pylist()


def test_fraud_rate_by_day(lake):
    assert rows(lake, "fraud_rate_by_day") == [
        {"day": D1, "transactions": 6, "frauds": 2, "fraud_rate": pytest.approx(2 / 6),
         "amount": 110.0},
        {"day": D2, "transactions": 4, "frauds": 2, "fraud_rate": pytest.approx(2 / 3),
         "amount": 280.0},  # the unlabelled t9 counts as a transaction, not in the rate
    ]
    assert [r["day"] for r in rows(lake, "fraud_rate_by_day", start_day=D2)] == [D2]
    assert rows(lake, "fraud_rate_by_day", start_day="2024-04-01") == []


def test_fraud_rate_by_channel(lake):
    assert rows(lake, "fraud_rate_by_channel") == [
        {"channel": "ecommerce", "transactions": 5, "frauds": 3, "fraud_rate": 0.6,
         "fraud_amount": 170.0},
        {"channel": "atm", "transactions": 2, "frauds": 1, "fraud_rate": 0.5,
         "fraud_amount": 70.0},
        {"channel": "card_present", "transactions": 2, "frauds": 0, "fraud_rate": 0.0,
         "fraud_amount": 0.0},
        {"channel": "unknown", "transactions": 1, "frauds": 0, "fraud_rate": None,
         "fraud_amount": 0.0},
    ]
    by_channel = {r["channel"]: r for r in rows(lake, "fraud_rate_by_channel", start_day=D2)}
    assert by_channel["ecommerce"]["fraud_rate"] == 1.0 and "card_present" not in by_channel


def test_fraud_rate_by_merchant_category(lake):
    result = rows(lake, "fraud_rate_by_merchant_category")
    assert [(r["merchant_category"], r["transactions"], r["frauds"], r["fraud_rate"])
            for r in result] == [("5411", 5, 3, 0.6), ("unknown", 3, 1, 0.5), ("5812", 2, 0, 0.0)]


def test_riskiest_terminals_ranks_and_filters(lake):
    result = rows(lake, "riskiest_terminals", min_transactions=2, top_n=2)
    assert [(r["risk_rank"], r["terminal_id"], r["frauds"], r["fraud_rate"]) for r in result] == [
        (1, "T1", 3, 0.6), (2, "T3", 1, 0.5)]
    assert [r["terminal_id"] for r in rows(lake, "riskiest_terminals", min_transactions=4)] == [
        "T1"]


def test_alert_volume_vs_capacity(lake):
    assert rows(lake, "alert_volume_vs_capacity", capacity=1) == [
        {"day": D1, "cases_opened": 1, "grouped_alerts": 1, "high_severity": 1, "capacity": 1,
         "utilisation": 1.0, "over_capacity": 0},
        {"day": D2, "cases_opened": 2, "grouped_alerts": 0, "high_severity": 1, "capacity": 1,
         "utilisation": 2.0, "over_capacity": 1},
    ]


def test_alert_precision_from_dispositions(lake):
    assert rows(lake, "alert_precision") == [
        {"severity": "high", "cases": 2, "closed": 1, "confirmed_fraud": 1, "false_positives": 0,
         "precision": 1.0},
        {"severity": "medium", "cases": 1, "closed": 1, "confirmed_fraud": 0,
         "false_positives": 1, "precision": 0.0},
        {"severity": "all", "cases": 3, "closed": 2, "confirmed_fraud": 1, "false_positives": 1,
         "precision": 0.5},
    ]


def test_alert_queue_status(lake):
    assert [(r["status"], r["severity"], r["cases"]) for r in rows(lake, "alert_queue_status")] \
        == [("closed", "high", 1), ("closed", "medium", 1), ("in_review", "high", 1)]


def test_score_distribution_by_model_version(lake):
    result = rows(lake, "score_distribution_by_model_version", bins=10)
    assert [(r["model_version"], r["bin"], r["transactions"], r["alerts"]) for r in result] == [
        (1, 0, 2, 0), (1, 5, 1, 1), (1, 9, 2, 2),  # a score of exactly 1.0 is in the last bin
        (2, 2, 1, 0), (2, 8, 1, 1)]
    assert result[1]["bin_low"] == 0.5 and result[1]["bin_high"] == 0.6


def test_alert_rate_by_day(lake):
    assert rows(lake, "alert_rate_by_day") == [
        {"day": D1, "scored": 5, "alerts": 3, "alert_rate": 0.6,
         "mean_score": pytest.approx(0.504)},
        {"day": D2, "scored": 2, "alerts": 1, "alert_rate": 0.5, "mean_score": 0.5},
    ]


def test_quarantine_reasons_over_time(lake):
    assert [tuple(r.values()) for r in rows(lake, "quarantine_reasons_over_time")] == [
        (D1, "bad_amount", 2, 2), (D1, "bad_timestamp", 1, 1), (D2, "bad_amount", 1, 1)]


def test_every_query_is_tested_and_compiles_against_the_writers_schemas():
    tested = {name.removeprefix("test_").split("_from")[0] for name in globals()}
    for name, query in load_library().items():
        assert any(t.startswith(name) for t in tested), f"no test for named query {name}"
        schema = output_schema(query)
        assert schema.names and all(pa.types.is_decimal(t) is False for t in schema.types)


def test_parameters_are_bound_never_pasted(lake):
    hostile = "2024-03-01' OR '1'='1"
    with pytest.raises(NamedQueryError, match="start_day is a day"):
        rows(lake, "fraud_rate_by_day", start_day=hostile)
    with pytest.raises(NamedQueryError, match="top_n must be integer"):
        rows(lake, "riskiest_terminals", top_n="ten")
    with pytest.raises(NamedQueryError, match="has no parameter k"):
        rows(lake, "alert_volume_vs_capacity", k=5)
    sql, values = get_query("riskiest_terminals").positional({"start_day": D2, "top_n": "3"})
    assert ":" not in sql.replace("::", "") and sql.count("?") == len(values) == 4
    assert values == ["'2024-03-02'", "'9999-12-31'", "20", "3"]  # Athena literals, in order


def test_missing_table_names_the_command_that_creates_it(workspace):
    _curated(workspace)
    refresh_catalog(workspace)
    with pytest.raises(QueryError, match="needs table 'scored'.*fraudops score"):
        run_named_query(workspace, "alert_rate_by_day")


def test_malformed_query_file_is_reported_with_its_line(tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("-- Title\n-- answers: x\n-- param: day date 1 what\nSELECT :day\n")
    with pytest.raises(NamedQueryError, match=r"bad.sql:3: expected 'param: NAME TYPE"):
        parse_query_file(bad)
    bad.write_text("-- Title\n-- answers: x\nSELECT :undeclared\n")
    with pytest.raises(NamedQueryError, match="undeclared parameter"):
        parse_query_file(bad)


def test_export_is_complete_and_replaces_the_previous_one(workspace):
    lake = build_crafted_lake(workspace)
    alerts = pq.read_table(alerts_dir(lake), partitioning="hive")
    assert alerts.num_rows == 4 and sorted(set(alerts.column("dt").to_pylist())) == [D1, D2]
    assert set(ALERTS_SCHEMA.names) == set(alerts.column_names)
    assert pq.read_schema(lake.lake / "cases" / "part-00000.parquet").names == CASES_SCHEMA.names
    CaseQueue(lake.cases_db).add_alert(_alert("t8", "C9", D2, 0.9, "high"))
    export_queue(lake)
    assert rows(lake, "alert_queue_status")[-1] == {
        **rows(lake, "alert_queue_status")[-1], "status": "open", "cases": 1}
    leftovers = [p.name for p in lake.lake.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging or retired directories left behind


def test_cli_runs_a_named_query_with_parameters(lake, capsys):
    assert cli_main(["athena", "query", "--named", "riskiest_terminals", "--param", "top_n=1",
                     "--param", "min_transactions=2", "--format", "json",
                     "--workdir", str(lake.root)]) == 0
    assert [r["terminal_id"] for r in json.loads(capsys.readouterr().out)] == ["T1"]


def test_empty_queue_exports_queryable_empty_tables(workspace):
    summary = export_queue(workspace)
    assert (summary.alerts, summary.cases, summary.registered) == (0, 0, ("alerts", "cases"))
    assert run_named_query(workspace, "alert_volume_vs_capacity").num_rows == 0
    assert [r["cases"] for r in rows(workspace, "alert_precision")] == [0]


def test_timestamps_keep_utc(lake):
    status = rows(lake, "alert_queue_status")[0]
    assert status["oldest_opened_at"].utcoffset().total_seconds() == 0
    assert status["oldest_opened_at"] <= datetime.now(UTC)
