"""Compliance records on AWS: reports from Athena into the Object-Lock records bucket,
audit checkpoints beside them, and investigators' case decisions in the lake's cases table.

S3 (Object Lock, conditional writes) runs under moto; Athena executes no SQL
under moto, so its answers come from botocore's Stubber, filled with what the
very same report query returns over the same data locally (DuckDB). Each AWS
report must then equal the local one: same SQL text, same parameters, same result.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.stub import Stubber
from moto import mock_aws

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reports import MASKED, _aml_workspace, _sar_workspace  # noqa: E402

from pipelines.analytics.exports import export_queue  # noqa: E402
from pipelines.analytics.reports import ReportError, build, publish  # noqa: E402
from pipelines.analytics.reports.data import AthenaLake  # noqa: E402
from pipelines.analytics.reports.document import Report, Section, Table  # noqa: E402
from pipelines.analytics.reports.output import publish_report  # noqa: E402
from pipelines.analytics.runner import run_as_on_athena  # noqa: E402
from pipelines.compliance.audit import current_head, list_entries  # noqa: E402
from pipelines.compliance.carddata import CardDataError  # noqa: E402
from pipelines.compliance.policy import BSA_RETENTION_DAYS, set_retention  # noqa: E402
from pipelines.compliance.records_bucket import (  # noqa: E402
    RecordsBucket,
    checkpoint_key,
    checkpoint_trail,
)
from pipelines.core.workspace import Workspace  # noqa: E402
from pipelines.data.labels import LABEL_SCHEMA  # noqa: E402
from pipelines.data.lake.athena_client import AthenaRunner, AthenaTarget  # noqa: E402
from pipelines.data.lake.ddl import athena_tables  # noqa: E402
from pipelines.data.lake.named_queries import REPORT_QUERY_DIR, get_query  # noqa: E402
from pipelines.data.lake.tables import CASES_SCHEMA  # noqa: E402
from pipelines.serving.alerts.cases import CaseError  # noqa: E402
from pipelines.serving.alerts.lake_cases import case_key, open_case  # noqa: E402
from pipelines.serving.alerts.lake_queue import LakeCaseQueue  # noqa: E402

REGION = "us-east-1"
RECORDS = "fraudops-dev-records-123456789012"
TARGET = AthenaTarget(database="fraudops_dev", workgroup="fraudops-dev", lake_bucket="lake",
                      output_location="s3://artifacts/athena-results/", records_bucket=RECORDS)
PERIOD = (date(2026, 3, 1), date(2026, 3, 6))
_ATHENA_TYPES = {pa.int64(): "bigint", pa.float64(): "double", pa.bool_(): "boolean",
                 pa.string(): "varchar", pa.date32(): "date"}


# --- Athena answering with what the same query returns locally ------------------------------


def _athena_type(data_type: pa.DataType) -> str:
    return "timestamp" if pa.types.is_timestamp(data_type) else _ATHENA_TYPES[data_type]


def _athena_text(value: Any) -> dict[str, str]:
    """A value as Athena's result set carries it (text; timestamps as Athena prints them)."""
    if value is None:
        return {}
    if isinstance(value, datetime):
        return {"VarCharValue": value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]}
    if isinstance(value, bool):
        return {"VarCharValue": str(value).lower()}
    return {"VarCharValue": str(value)}


class StubbedAthena:
    """An ``AthenaLake`` whose client is stubbed query by query from the local results."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.client = boto3.client("athena", region_name=REGION)
        self.stub = Stubber(self.client)
        self.count = 0

    def expect(self, name: str, params: dict[str, object]) -> None:
        """Athena will be asked ``name`` with ``params`` and answer as DuckDB does locally."""
        query = get_query(name, REPORT_QUERY_DIR)
        local = run_as_on_athena(self.ws, query, params)
        sql, execution_parameters = query.positional(params)
        self.count += 1
        query_id = f"q-{self.count}"
        self.stub.add_response("start_query_execution", {"QueryExecutionId": query_id}, {
            "QueryString": sql, "ExecutionParameters": execution_parameters,
            "QueryExecutionContext": {"Database": TARGET.database},
            "WorkGroup": TARGET.workgroup,
            "ResultConfiguration": {"OutputLocation": TARGET.output_location}})
        self.stub.add_response("get_query_execution", {"QueryExecution": {
            "QueryExecutionId": query_id, "Status": {"State": "SUCCEEDED"}}},
            {"QueryExecutionId": query_id})
        columns = [{"Name": f.name, "Type": _athena_type(f.type)} for f in local.schema]
        rows = [{"Data": [{"VarCharValue": c["Name"]} for c in columns]}]
        rows += [{"Data": [_athena_text(row[c["Name"]]) for c in columns]}
                 for row in local.to_pylist()]
        self.stub.add_response("get_query_results", {"ResultSet": {
            "ResultSetMetadata": {"ColumnInfo": columns}, "Rows": rows}},
            {"QueryExecutionId": query_id, "MaxResults": 1000})

    def lake(self) -> AthenaLake:
        return AthenaLake(AthenaRunner(self.client, TARGET, sleep=lambda _s: None))


def _days(start: date, end: date) -> dict[str, object]:
    return {"start_day": start.isoformat(), "end_day": end.isoformat()}


# CTR and structuring read the cash days around the period (roll-forward, window).
CASH_DAYS = _days(PERIOD[0] - timedelta(days=4), PERIOD[1] + timedelta(days=1))


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=RECORDS, ObjectLockEnabledForBucket=True)
        client.create_bucket(Bucket="lake")
        client.put_bucket_versioning(Bucket="lake",
                                     VersioningConfiguration={"Status": "Enabled"})
        yield client


def _objects(s3, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=RECORDS, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=RECORDS, Key=o["Key"])["Body"].read() for o in listed}


def _assert_locked(s3, key: str, days: int) -> None:
    head = s3.head_object(Bucket=RECORDS, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE", key
    expected = datetime.now(UTC) + timedelta(days=days)
    assert abs(head["ObjectLockRetainUntilDate"] - expected) < timedelta(minutes=5), key


# --- reports ------------------------------------------------------------------------------


def test_every_report_query_compiles_against_the_declared_tables_and_is_athena_typed():
    from pipelines.analytics.runner import output_schema
    from pipelines.data.lake.named_queries import load_library

    library = load_library(REPORT_QUERY_DIR)
    assert set(library) == {"report_cash_transactions", "report_period_alerts",
                            "report_fraud_counts"}
    for query in library.values():
        schema = output_schema(query)  # runs on empty tables with the writers' schemas
        assert all(_athena_type(f.type) for f in schema), query.name
        assert [p.name for p in query.params] == ["start_day", "end_day"], query.name


def test_ctr_from_athena_lands_in_the_records_bucket_locked_and_equal_to_the_local_report(
        workspace: Workspace, s3):
    _aml_workspace(workspace)
    athena = StubbedAthena(workspace)
    athena.expect("report_cash_transactions", CASH_DAYS)
    records = RecordsBucket.for_workspace(s3, RECORDS, workspace)
    with athena.stub:
        written = publish(workspace, "ctr", *PERIOD, athena.lake(), records, actor="officer")
    athena.stub.assert_no_pending_responses()

    prefix = f"reports/ctr/{written.run_id}/"
    assert written.location == f"s3://{RECORDS}/{prefix}"
    stored = _objects(s3, prefix)
    assert set(stored) == {prefix + name for name in [*written.files, "manifest.json"]}
    for key in stored:
        _assert_locked(s3, key, BSA_RETENTION_DAYS)
    manifest = json.loads(stored[prefix + "manifest.json"])
    assert manifest["files"] == written.files
    payload = json.loads(stored[prefix + "report.json"])
    local = build(workspace, "ctr", *PERIOD)
    assert [r["customer_id"] for r in payload["ctr"]] == ["C1", "C5"]
    assert payload["summary"] == local.summary
    assert len(payload["structuring_flags"]) == len(local.data["structuring_flags"]) == 1
    assert b"C1" in stored[prefix + "ctr.csv"] and stored[prefix + "report.pdf"][:5] == b"%PDF-"
    (entry,) = list_entries(workspace, action="report.generate")
    assert entry["details"]["location"] == written.location and entry["actor"] == "officer"


def test_sar_candidates_and_fraud_stats_on_athena_equal_the_local_reports(workspace: Workspace):
    _sar_workspace(workspace)
    export_queue(workspace)  # the lake's alerts and cases tables, as on AWS
    athena = StubbedAthena(workspace)
    athena.expect("report_period_alerts", _days(*PERIOD))
    athena.expect("report_cash_transactions", CASH_DAYS)
    athena.expect("report_fraud_counts", _days(*PERIOD))
    with athena.stub:
        sar = build(workspace, "sar-candidates", *PERIOD, lake=athena.lake())
        stats = build(workspace, "fraud-stats", *PERIOD, lake=athena.lake())
    athena.stub.assert_no_pending_responses()

    assert sar.data == build(workspace, "sar-candidates", *PERIOD).data
    subjects = {c["subject"]["customer_id"] for c in sar.data["candidates"]}
    assert subjects == {"C7", "C8", "C4", None}
    c7 = next(c for c in sar.data["candidates"] if c["subject"]["customer_id"] == "C7")
    assert c7["subject"]["card_masked"] == [MASKED] and "investigator-ann" in c7["narrative"]
    assert stats.data == build(workspace, "fraud-stats", *PERIOD).data


def test_the_model_card_is_refused_on_aws_saying_why(workspace: Workspace, s3):
    with pytest.raises(ReportError, match="model-card report reads the local model registry"):
        publish(workspace, "model-card", *PERIOD, AthenaLake(None),  # type: ignore[arg-type]
                RecordsBucket(s3, RECORDS, BSA_RETENTION_DAYS))
    assert _objects(s3, "") == {}


def test_a_clear_card_number_never_reaches_the_records_bucket(workspace: Workspace, s3):
    leaky = Report("sar-candidates", "Leaky", *PERIOD,
                   [Section("Candidates", [], [Table("t", "T", ["note"], [["4532015112830366"]])])],
                   data={})
    with pytest.raises(CardDataError, match="nothing was written"):
        publish_report(workspace, leaky, RecordsBucket(s3, RECORDS, BSA_RETENTION_DAYS))
    with pytest.raises(CardDataError, match="would hold clear card numbers"):
        RecordsBucket(s3, RECORDS, BSA_RETENTION_DAYS).put("x.json", b'{"pan": "4532015112830366"}')
    assert _objects(s3, "") == {}
    assert list_entries(workspace, action="report.generate") == []


def test_retention_follows_the_workspace_policy(workspace: Workspace, s3):
    set_retention(workspace, {"records": BSA_RETENTION_DAYS + 365})
    records = RecordsBucket.for_workspace(s3, RECORDS, workspace)
    stored = records.put("reports/x/1/report.json", b"{}")
    _assert_locked(s3, stored.key, BSA_RETENTION_DAYS + 365)
    with pytest.raises(Exception, match="AccessDenied"):
        s3.delete_object(Bucket=RECORDS, Key=stored.key, VersionId=stored.version_id)


# --- audit checkpoints --------------------------------------------------------------------


def test_the_audit_checkpoint_lands_locked_and_is_the_verified_mac_head(workspace: Workspace, s3):
    from pipelines.compliance.audit import record

    record(workspace, "report.generate", actor="officer", subject="reports/ctr/1", details={})
    records = RecordsBucket.for_workspace(s3, RECORDS, workspace)
    stored = checkpoint_trail(workspace, records)
    head = current_head(workspace)
    assert stored.key == checkpoint_key(head) == (
        f"audit/checkpoints/{head['seq']:012d}-{head['hash'][:16]}.json")
    body = json.loads(s3.get_object(Bucket=RECORDS, Key=stored.key)["Body"].read())
    assert body == head and set(body) == {"seq", "hash", "key_id", "mac"}
    _assert_locked(s3, stored.key, BSA_RETENTION_DAYS)


def test_a_trail_that_does_not_verify_is_not_checkpointed(workspace: Workspace, s3):
    from pipelines.compliance.audit import AuditError, audit_log_path, record

    record(workspace, "case.close", actor="ann", subject="case:1", details={"x": 1})
    path = audit_log_path(workspace)
    path.write_text(path.read_text().replace('"x":1', '"x":2'))
    with pytest.raises(AuditError, match="does not verify"):
        checkpoint_trail(workspace, RecordsBucket(s3, RECORDS, BSA_RETENTION_DAYS))
    assert _objects(s3, "audit/") == {}


# --- the report command on AWS ------------------------------------------------------------


class _Session:
    def __init__(self, clients: dict[str, Any]) -> None:
        self.clients = clients

    def client(self, name: str) -> Any:
        return self.clients[name]


def test_report_command_on_aws_writes_the_report_and_the_checkpoint(workspace: Workspace, s3,
                                                                    monkeypatch, capsys):
    from pipelines.cli.commands import _common as common
    from pipelines.cli.commands import report as report_command
    from pipelines.cli.main import main

    _aml_workspace(workspace)
    athena = StubbedAthena(workspace)
    athena.expect("report_cash_transactions", CASH_DAYS)
    monkeypatch.setattr(report_command, "aws_session",
                        lambda args: _Session({"s3": s3, "athena": athena.client}))
    for module in (report_command, common):
        monkeypatch.setattr(module, "athena_target", lambda args, session: TARGET)
    monkeypatch.setattr("pipelines.data.lake.athena_client.time.sleep", lambda _s: None)
    with athena.stub:
        code = main(["report", "ctr", "--from", "2026-03-01", "--to", "2026-03-06",
                     "--backend", "aws", "--env", "dev", "--workdir", str(workspace.root),
                     "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["directory"].startswith(f"s3://{RECORDS}/reports/ctr/")
    checkpoint = result["audit_checkpoint"].removeprefix(f"s3://{RECORDS}/")
    head = json.loads(s3.get_object(Bucket=RECORDS, Key=checkpoint)["Body"].read())
    (entry,) = list_entries(workspace, action="report.generate")
    assert head["seq"] == entry["seq"] and head["hash"] == entry["hash"]  # anchors the report


def test_audit_checkpoint_command_writes_the_head_or_says_why_not(workspace: Workspace, s3,
                                                                 monkeypatch, capsys):
    from pipelines.cli.commands import _common as common
    from pipelines.cli.commands import audit as audit_command
    from pipelines.cli.main import main
    from pipelines.compliance.audit import record

    monkeypatch.setattr(audit_command, "aws_session", lambda args: _Session({"s3": s3}))
    monkeypatch.setattr(common, "athena_target", lambda args, session: TARGET)
    command = ["audit", "checkpoint", "--env", "dev", "--workdir", str(workspace.root)]
    assert main(command) == 2
    assert "nothing to checkpoint yet" in capsys.readouterr().err
    record(workspace, "case.close", actor="ann", subject="case:1", details={})
    assert main(command) == 0
    key = checkpoint_key(current_head(workspace))
    assert f"s3://{RECORDS}/{key}" in capsys.readouterr().out
    assert len(_objects(s3, "audit/checkpoints/")) == 1


# --- case dispositions in the lake's cases table ------------------------------------------


def _case_row(s3, case_id: int) -> dict:
    body = s3.get_object(Bucket="lake", Key=case_key(case_id))["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.names == CASES_SCHEMA.names
    return table.cast(CASES_SCHEMA).to_pylist()[0]


def test_case_decisions_land_in_the_cases_table_and_a_stale_write_is_refused(s3):
    alert = {"alert_id": 42, "transaction_id": "tx-42", "raised_at": "2026-03-03T08:00:00+00:00"}
    assert open_case(s3, "lake", alert) is True
    assert open_case(s3, "lake", alert) is False  # a retry: one case, still open
    queue = LakeCaseQueue(s3, "lake")
    queue.assign(42, "ann")
    assert _case_row(s3, 42)["status"] == "in_review"
    closed = queue.close(42, "escalate_sar", actor="ann")
    row = _case_row(s3, 42)
    assert (row["status"], row["disposition"], row["disposition_is_fraud"], row["closed_by"]) == (
        "closed", "escalate_sar", 1, "ann")
    assert row["updated_at"] == closed["updated_at"] and row["closed_at"] is not None
    versions = s3.list_object_versions(Bucket="lake", Prefix=case_key(42))["Versions"]
    assert len(versions) == 3  # open, in review, closed: every version kept
    # The disposition labels the alerted transaction in the lake's labels table.
    labels = athena_tables()["labels"].prefix  # where the Athena labels table reads
    [label_key] = [o["Key"] for o in
                   s3.list_objects_v2(Bucket="lake", Prefix=f"{labels}/")["Contents"]]
    assert label_key == f"{labels}/dt={row['closed_at']:%Y-%m-%d}/labels-case-42.parquet"
    label = pq.read_table(io.BytesIO(s3.get_object(Bucket="lake", Key=label_key)["Body"].read()))
    assert label.schema == LABEL_SCHEMA
    assert label.to_pylist() == [{"transaction_id": "tx-42", "is_fraud": 1,
                                  "label_known_at": row["closed_at"],
                                  "label_source": "case:42:escalate_sar"}]
    with pytest.raises(CaseError, match="already closed as escalate_sar"):
        queue.close(42, "false_positive", actor="bob")
    with pytest.raises(CaseError, match="no case 7 at s3://lake/cases/case-7.parquet"):
        queue.show(7)


def test_a_concurrent_change_is_not_overwritten(s3, monkeypatch):
    open_case(s3, "lake", {"alert_id": 5, "transaction_id": "tx-5",
                           "raised_at": "2026-03-03T08:00:00+00:00"})
    original, interfered = LakeCaseQueue._read, []

    def read_then_someone_else_writes(self, case_id: int):
        found = original(self, case_id)
        if not interfered:  # bob's assignment lands between ann's read and write
            interfered.append(case_id)
            LakeCaseQueue(s3, "lake").assign(case_id, "bob")
        return found

    monkeypatch.setattr(LakeCaseQueue, "_read", read_then_someone_else_writes)
    with pytest.raises(CaseError, match="changed while you worked on it"):
        LakeCaseQueue(s3, "lake").close(5, "false_positive", actor="ann")
    assert _case_row(s3, 5)["assignee"] == "bob"


def test_case_command_on_aws_closes_the_lake_case_and_audits_it(workspace: Workspace, s3,
                                                               monkeypatch, capsys):
    from pipelines.cli.commands import alerts as alerts_command
    from pipelines.cli.main import main

    open_case(s3, "lake", {"alert_id": 9, "transaction_id": "tx-9",
                           "raised_at": "2026-03-03T08:00:00+00:00"})
    monkeypatch.setattr(alerts_command, "aws_session", lambda args: _Session({"s3": s3}))
    monkeypatch.setattr(alerts_command, "athena_target", lambda args, session: TARGET)
    aws = ["--backend", "aws", "--env", "dev", "--workdir", str(workspace.root)]
    assert main(["case", "close", "9", "--disposition", "false_positive", "--actor", "ann",
                 *aws]) == 0
    assert "case 9" in capsys.readouterr().out
    row = _case_row(s3, 9)
    assert (row["status"], row["disposition_is_fraud"], row["closed_by"]) == ("closed", 0, "ann")
    (entry,) = list_entries(workspace, action="case.close")
    assert entry["details"]["backend"] == "aws" and entry["subject"] == "case:9"
    assert main(["case", "assign", "9", "--to", "bob", *aws]) == 2  # closed: refused
    assert "is closed (false_positive)" in capsys.readouterr().err
