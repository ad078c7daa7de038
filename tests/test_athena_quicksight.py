"""Athena DDL from the schemas, the Athena call sequence and the QuickSight set-up (Stubber).

moto's Athena runs no SQL and moto lacks most of QuickSight, so the AWS paths
are checked with botocore's Stubber: the calls, their order and key parameters.
"""

from __future__ import annotations

import re

import boto3
import pyarrow as pa
import pytest
from botocore.stub import ANY, Stubber

from pipelines.analytics.quicksight import QuickSightConfig, QuickSightDeployer, RlsRule
from pipelines.analytics.runner import output_schema
from pipelines.core.workspace import Workspace
from pipelines.data.lake.athena_client import (
    AthenaQueryError,
    AthenaRunner,
    AthenaTarget,
    resolve_target,
)
from pipelines.data.lake.ddl import athena_tables, create_table_ddl, hive_type
from pipelines.data.lake.named_queries import get_query, load_library

TARGET = AthenaTarget("fraudops_dev", "fraudops-dev", "lake-bkt", "s3://art-bkt/athena-results/")


# --- DDL ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(athena_tables()))
def test_ddl_declares_every_schema_column_with_its_type(name):
    spec = athena_tables()[name]
    ddl = create_table_ddl(spec, "fraudops_dev", "lake-bkt")
    for column in spec.schema:
        if spec.partitioned and column.name == "dt":
            assert "PARTITIONED BY (`dt` string)" in ddl
        else:
            assert f"  `{column.name}` {hive_type(column.type, column.name)}" in ddl
    assert f"LOCATION 's3://lake-bkt/{spec.prefix}/'" in ddl
    assert ddl.startswith(f"CREATE EXTERNAL TABLE IF NOT EXISTS `fraudops_dev`.`{name}` (")


def test_day_partitioned_tables_use_partition_projection():
    ddl = create_table_ddl(athena_tables()["transactions"], "db", "lake-bkt", "2023-06-01")
    for prop in ("'projection.enabled'='true'", "'projection.dt.type'='date'",
                 "'projection.dt.range'='2023-06-01,NOW'", "'projection.dt.format'='yyyy-MM-dd'",
                 "'storage.location.template'='s3://lake-bkt/curated/transactions/dt=${dt}/'"):
        assert prop in ddl
    cases = create_table_ddl(athena_tables()["cases"], "db", "lake-bkt")
    assert "PARTITIONED BY" not in cases and "projection" not in cases


def test_table_locations_are_the_local_lake_layout(workspace: Workspace):
    tables = athena_tables()
    assert workspace.lake / tables["transactions"].prefix == workspace.curated
    assert workspace.lake / tables["scored"].prefix == workspace.scored
    assert workspace.lake / tables["quarantine"].prefix == workspace.quarantine


# --- Athena ---------------------------------------------------------------------


def _athena():
    client = boto3.client("athena", region_name="us-east-1")
    return client, Stubber(client)


def _execution(query_id: str, state: str, reason: str = "") -> dict:
    status = {"State": state, **({"StateChangeReason": reason} if reason else {})}
    return {"QueryExecution": {"QueryExecutionId": query_id, "Status": status}}


def _cell(value):
    return {} if value is None else {"VarCharValue": value}


def test_named_query_runs_with_bound_parameters_polls_and_pages():
    client, stub = _athena()
    sql, _ = get_query("riskiest_terminals").positional()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-1"}, {
        "QueryString": sql,
        "QueryExecutionContext": {"Database": "fraudops_dev"},
        "WorkGroup": "fraudops-dev",
        "ResultConfiguration": {"OutputLocation": "s3://art-bkt/athena-results/"},
        "ExecutionParameters": ["'2024-03-01'", "'9999-12-31'", "20", "2"],
    })
    for state in ("QUEUED", "RUNNING", "SUCCEEDED"):
        stub.add_response("get_query_execution", _execution("q-1", state),
                          {"QueryExecutionId": "q-1"})
    columns = [{"Name": "risk_rank", "Type": "bigint"}, {"Name": "terminal_id", "Type": "varchar"},
               {"Name": "fraud_rate", "Type": "double"}]
    header = {"Data": [_cell(c["Name"]) for c in columns]}
    stub.add_response("get_query_results", {
        "ResultSet": {"ResultSetMetadata": {"ColumnInfo": columns},
                      "Rows": [header, {"Data": [_cell("1"), _cell("T1"), _cell("0.6")]}]},
        "NextToken": "page-2",
    }, {"QueryExecutionId": "q-1", "MaxResults": 1000})
    stub.add_response("get_query_results", {
        "ResultSet": {"ResultSetMetadata": {"ColumnInfo": columns},
                      "Rows": [{"Data": [_cell("2"), _cell("T3"), _cell(None)]}]},
    }, {"QueryExecutionId": "q-1", "MaxResults": 1000, "NextToken": "page-2"})
    sleeps = []
    with stub:
        table = AthenaRunner(client, TARGET, sleep=sleeps.append).run_named(
            get_query("riskiest_terminals"), {"start_day": "2024-03-01", "top_n": "2"})
    stub.assert_no_pending_responses()
    assert sleeps == [1.0, 1.0]
    assert table.schema == pa.schema([("risk_rank", pa.int64()), ("terminal_id", pa.string()),
                                      ("fraud_rate", pa.float64())])
    assert table.to_pylist() == [{"risk_rank": 1, "terminal_id": "T1", "fraud_rate": 0.6},
                                 {"risk_rank": 2, "terminal_id": "T3", "fraud_rate": None}]


def test_failed_query_reports_athenas_reason():
    client, stub = _athena()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-2"}, None)
    reason = "TABLE_NOT_FOUND: line 1:15: Table 'x' does not exist"
    stub.add_response("get_query_execution", _execution("q-2", "FAILED", reason), None)
    with stub, pytest.raises(AthenaQueryError, match="q-2 FAILED: TABLE_NOT_FOUND"):
        AthenaRunner(client, TARGET, sleep=lambda _s: None).run("SELECT * FROM x")


def test_slow_query_is_stopped_after_the_timeout():
    client, stub = _athena()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-3"}, None)
    for _ in range(3):
        stub.add_response("get_query_execution", _execution("q-3", "RUNNING"), None)
    stub.add_response("stop_query_execution", {}, {"QueryExecutionId": "q-3"})
    runner = AthenaRunner(client, TARGET, poll_seconds=1, timeout_seconds=2, sleep=lambda _s: None)
    with stub, pytest.raises(AthenaQueryError, match="still RUNNING after 2 s; stopped it"):
        runner.run("SELECT 1")
    stub.assert_no_pending_responses()


def test_create_tables_runs_every_ddl_in_the_workgroup():
    client, stub = _athena()
    for index in range(len(athena_tables())):
        stub.add_response("start_query_execution", {"QueryExecutionId": f"ddl-{index}"}, {
            "QueryString": ANY, "QueryExecutionContext": {"Database": "fraudops_dev"},
            "WorkGroup": "fraudops-dev", "ResultConfiguration": ANY,
        })
        stub.add_response("get_query_execution", _execution(f"ddl-{index}", "SUCCEEDED"), None)
    sent = []
    client.meta.events.register("provide-client-params.athena.StartQueryExecution",
                                lambda params, **_: sent.append(params["QueryString"]))
    with stub:
        ids = AthenaRunner(client, TARGET, sleep=lambda _s: None).create_tables()
    assert list(ids) == list(athena_tables())
    assert [re.search(r"`fraudops_dev`\.`(\w+)`", sql).group(1) for sql in sent] == list(ids)


def test_named_query_library_sync_is_idempotent():
    client, stub = _athena()
    library = {name: load_library()[name] for name in ("alert_precision", "fraud_rate_by_day")}
    same_sql, _ = library["alert_precision"].positional()
    stub.add_response("list_named_queries", {"NamedQueryIds": ["id-1", "id-2"]},
                      {"WorkGroup": "fraudops-dev", "MaxResults": 50})
    from pipelines.data.lake.athena_client import _description

    stub.add_response("batch_get_named_query", {"NamedQueries": [
        {"Name": "alert_precision", "Database": "fraudops_dev", "QueryString": same_sql,
         "Description": _description(library["alert_precision"]), "NamedQueryId": "id-1"},
        {"Name": "fraud_rate_by_day", "Database": "fraudops_dev", "QueryString": "SELECT 1",
         "NamedQueryId": "id-2"},
    ]}, {"NamedQueryIds": ["id-1", "id-2"]})
    stub.add_response("update_named_query", {}, {
        "NamedQueryId": "id-2", "Name": "fraud_rate_by_day", "Description": ANY,
        "QueryString": library["fraud_rate_by_day"].positional()[0]})
    with stub:
        outcome = AthenaRunner(client, TARGET).sync_named_queries(library)
    assert outcome == {"alert_precision": "unchanged", "fraud_rate_by_day": "updated"}

    client, stub = _athena()
    stub.add_response("list_named_queries", {}, None)  # no queries yet: no ids key
    for name, query in library.items():
        stub.add_response("create_named_query", {"NamedQueryId": f"new-{name}"}, {
            "Name": name, "Description": ANY, "Database": "fraudops_dev",
            "QueryString": query.positional()[0], "WorkGroup": "fraudops-dev"})
    with stub:
        assert set(AthenaRunner(client, TARGET).sync_named_queries(library).values()) == {"created"}


def test_target_comes_from_the_stack_exports():
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    stub = Stubber(cloudformation)
    exports = {"GlueDatabase": "fraudops_dev", "AthenaWorkgroup": "fraudops-dev",
               "LakeBucket": "lake-bkt", "ArtifactsBucket": "art-bkt"}
    stub.add_response("list_exports", {"Exports": [
        {"ExportingStackId": "s", "Name": f"fraudops-dev-{k}", "Value": v}
        for k, v in exports.items()]}, {})
    with stub:
        assert resolve_target(cloudformation, "dev") == TARGET
    stub.add_response("list_exports", {"Exports": []}, {})
    with stub, pytest.raises(AthenaQueryError, match="fraudops-prod-GlueDatabase.*infra deploy"):
        resolve_target(cloudformation, "prod")


# --- QuickSight -----------------------------------------------------------------

CONFIG = QuickSightConfig(
    account_id="123456789012", workgroup="fraudops-dev", database="fraudops_dev",
    owner_arn="arn:aws:quicksight:us-east-1:123456789012:group/default/fraud-admins",
    viewer_group_arns=("arn:aws:quicksight:us-east-1:123456789012:group/default/analysts",),
    rls_rules=(RlsRule("fraud-analysts", "channel"),
               RlsRule("ecommerce-analysts", "channel", ("ecommerce",))),
)


def _deploy(exists: bool):
    client = boto3.client("quicksight", region_name="us-east-1")
    stub = Stubber(client)
    calls: list[tuple[str, dict]] = []
    client.meta.events.register(
        "provide-client-params.quicksight.*",
        lambda params, model, **_: calls.append((model.name, params)))
    library = load_library()

    def describe(method):
        if exists:
            stub.add_response(method, {"Status": 200}, None)
        else:
            stub.add_client_error(method, "ResourceNotFoundException", http_status_code=404)

    verb = "update" if exists else "create"
    describe("describe_data_source")
    stub.add_response(f"{verb}_data_source", {"Status": 200}, None)
    for _data_set in ["rls", *library]:
        describe("describe_data_set")
        stub.add_response(f"{verb}_data_set", {"Status": 200}, None)
        if _data_set != "rls":
            describe("describe_refresh_schedule")
            stub.add_response(f"{verb}_refresh_schedule", {"Status": 200}, None)
    describe("describe_dashboard")
    stub.add_response(f"{verb}_dashboard", {"Status": 200, "VersionArn": "arn:x/version/4"}, None)
    if exists:
        stub.add_response("update_dashboard_published_version", {"Status": 200}, None)
    with stub:
        report = QuickSightDeployer(client, CONFIG, "us-east-1", library, output_schema,
                                    set(athena_tables())).deploy()
    stub.assert_no_pending_responses()
    return calls, report


def test_quicksight_first_deploy_creates_everything_in_order():
    calls, report = _deploy(exists=False)
    names = [name for name, _ in calls if not name.startswith("Describe")]
    library = load_library()
    assert names == (["CreateDataSource", "CreateDataSet"]
                     + ["CreateDataSet", "CreateRefreshSchedule"] * len(library)
                     + ["CreateDashboard"])
    assert set(report.actions.values()) == {"created"}
    params = {n: p for n, p in calls if n == "CreateDataSource"}["CreateDataSource"]
    assert params["Type"] == "ATHENA"
    assert params["DataSourceParameters"] == {"AthenaParameters": {"WorkGroup": "fraudops-dev"}}

    data_sets = {p["DataSetId"]: p for n, p in calls if n == "CreateDataSet"}
    rls = data_sets["fraudops-dev-rls-rules"]
    assert rls["UseAs"] == "RLS_RULES"
    rls_sql = rls["PhysicalTableMap"]["named-query"]["CustomSql"]["SqlQuery"]
    assert "('ecommerce-analysts', 'ecommerce')" in rls_sql and "('fraud-analysts', '')" in rls_sql

    by_channel = data_sets["fraudops-dev-fraud-rate-by-channel"]
    sql = by_channel["PhysicalTableMap"]["named-query"]["CustomSql"]
    assert by_channel["ImportMode"] == "SPICE"
    assert "FROM fraudops_dev.transactions" in sql["SqlQuery"]
    assert "'0001-01-01'" in sql["SqlQuery"] and ":start_day" not in sql["SqlQuery"]
    assert {"Name": "fraud_rate", "Type": "DECIMAL"} in sql["Columns"]
    assert {"Name": "transactions", "Type": "INTEGER"} in sql["Columns"]
    assert by_channel["RowLevelPermissionDataSet"]["Arn"].endswith("dataset/fraudops-dev-rls-rules")
    # No channel column, so the channel rules cannot apply to it.
    assert "RowLevelPermissionDataSet" not in data_sets["fraudops-dev-fraud-rate-by-day"]

    schedules = [p for n, p in calls if n == "CreateRefreshSchedule"]
    assert {s["Schedule"]["ScheduleFrequency"]["Interval"] for s in schedules} == {"DAILY"}
    assert {s["Schedule"]["RefreshType"] for s in schedules} == {"FULL_REFRESH"}

    dashboard = {n: p for n, p in calls if n == "CreateDashboard"}["CreateDashboard"]
    visuals = dashboard["Definition"]["Sheets"][0]["Visuals"]
    assert len(visuals) == len(library)
    assert {d["Identifier"] for d in dashboard["Definition"]["DataSetIdentifierDeclarations"]} \
        == set(library)
    principals = {p["Principal"] for p in dashboard["Permissions"]}
    assert principals == {CONFIG.owner_arn, *CONFIG.viewer_group_arns}


def test_quicksight_second_deploy_updates_in_place():
    calls, report = _deploy(exists=True)
    names = [name for name, _ in calls if not name.startswith("Describe")]
    assert not any(name.startswith("Create") for name in names)
    assert names[-2:] == ["UpdateDashboard", "UpdateDashboardPublishedVersion"]
    published = calls[-1][1]
    assert published["VersionNumber"] == 4
    assert set(report.actions.values()) == {"updated"}
    assert all("UseAs" not in p for n, p in calls if n == "UpdateDataSet")


# --- CLI wiring -------------------------------------------------------------------


class _Session:
    """Stands in for boto3.Session: hands out the stubbed clients."""

    region_name = "us-east-1"

    def __init__(self, clients: dict):
        self.clients = clients

    def client(self, name: str):
        return self.clients[name]


def test_cli_runs_a_named_query_on_athena(monkeypatch, capsys):
    import json

    from pipelines.cli.commands import athena as athena_command
    from pipelines.cli.main import main as cli_main

    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cfn_stub = Stubber(cloudformation)
    cfn_stub.add_response("list_exports", {"Exports": [
        {"ExportingStackId": "s", "Name": f"fraudops-dev-{k}", "Value": v} for k, v in {
            "GlueDatabase": "fraudops_dev", "AthenaWorkgroup": "fraudops-dev",
            "LakeBucket": "lake-bkt", "ArtifactsBucket": "art-bkt"}.items()]}, {})
    client, stub = _athena()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-9"}, {
        "QueryString": ANY, "QueryExecutionContext": {"Database": "fraudops_dev"},
        "WorkGroup": "fraudops-dev", "ResultConfiguration": ANY,
        "ExecutionParameters": ["5", "5", "5", "'2024-03-02'", "'9999-12-31'"]})
    stub.add_response("get_query_execution", _execution("q-9", "SUCCEEDED"), None)
    columns = [{"Name": "day", "Type": "varchar"}, {"Name": "cases_opened", "Type": "bigint"}]
    stub.add_response("get_query_results", {"ResultSet": {
        "ResultSetMetadata": {"ColumnInfo": columns},
        "Rows": [{"Data": [_cell("day"), _cell("cases_opened")]},
                 {"Data": [_cell("2024-03-02"), _cell("7")]}]}}, None)
    monkeypatch.setattr(athena_command, "aws_session",
                        lambda args: _Session({"cloudformation": cloudformation, "athena": client}))
    with cfn_stub, stub:
        assert cli_main(["athena", "query", "--named", "alert_volume_vs_capacity", "--backend",
                         "aws", "--env", "dev", "--param", "start_day=2024-03-02", "--param",
                         "capacity=5", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"day": "2024-03-02", "cases_opened": 7}]


def test_rls_rules_from_the_command_line():
    from pipelines.cli.commands._common import UserError
    from pipelines.cli.commands.athena import parse_rls

    assert parse_rls(["all:channel", "web:channel=ecommerce,atm"]) == (
        RlsRule("all", "channel"), RlsRule("web", "channel", ("ecommerce", "atm")))
    with pytest.raises(UserError, match="GROUP:FIELD"):
        parse_rls(["no-field"])


def test_data_source_uses_the_least_privilege_role_when_the_stack_exports_one():
    from pipelines.analytics.quicksight import QuickSightConfig, QuickSightDeployer

    config = QuickSightConfig(account_id="123456789012", workgroup="fraudops-dev",
                              database="fraudops_dev", owner_arn="arn:owner",
                              athena_role_arn="arn:aws:iam::123456789012:role/qs-athena")
    deployer = QuickSightDeployer(None, config, "us-east-1", {}, None, set())
    assert deployer._athena_parameters() == {
        "WorkGroup": "fraudops-dev", "RoleArn": "arn:aws:iam::123456789012:role/qs-athena"}
