"""QuickSight over Athena: data source, SPICE datasets from the named queries, RLS, dashboard.

Everything is created or updated idempotently (describe, then create when it
does not exist, else update), so re-running after a change to a named query
updates the dataset in place:

1. an ``ATHENA`` data source bound to the project's workgroup;
2. a row-level-security rules dataset (``UseAs=RLS_RULES``): which analyst
   group may see which values of a field (e.g. the e-commerce team sees the
   ``ecommerce`` channel only; an empty value means every value);
3. one SPICE dataset per named query, as custom SQL: the very SQL of
   ``pipelines/data/lake/queries`` with its parameter defaults inlined (SPICE
   imports the whole range; analysts filter in QuickSight) and the tables
   qualified with the Glue database; the column list is the query's result
   schema; datasets that have the RLS field are protected by the rules dataset;
4. a daily refresh schedule per dataset (``create_refresh_schedule``);
5. a dashboard built from a definition: one visual per dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from pipelines.data.lake.named_queries import NamedQuery, sql_literal

DATA_SOURCE_ACTIONS = [
    "quicksight:DescribeDataSource", "quicksight:DescribeDataSourcePermissions",
    "quicksight:PassDataSource", "quicksight:UpdateDataSource", "quicksight:DeleteDataSource",
    "quicksight:UpdateDataSourcePermissions",
]
DATA_SET_ACTIONS = [
    "quicksight:DescribeDataSet", "quicksight:DescribeDataSetPermissions",
    "quicksight:PassDataSet", "quicksight:DescribeIngestion", "quicksight:ListIngestions",
    "quicksight:UpdateDataSet", "quicksight:DeleteDataSet", "quicksight:CreateIngestion",
    "quicksight:CancelIngestion", "quicksight:UpdateDataSetPermissions",
]
DASHBOARD_OWNER_ACTIONS = [
    "quicksight:DescribeDashboard", "quicksight:ListDashboardVersions",
    "quicksight:UpdateDashboardPermissions", "quicksight:QueryDashboard",
    "quicksight:UpdateDashboard", "quicksight:DeleteDashboard",
    "quicksight:DescribeDashboardPermissions", "quicksight:UpdateDashboardPublishedVersion",
]
DASHBOARD_VIEWER_ACTIONS = [
    "quicksight:DescribeDashboard", "quicksight:ListDashboardVersions",
    "quicksight:QueryDashboard",
]
REFRESH_SCHEDULE_ID = "daily-full-refresh"
RLS_GROUP_COLUMN = "GroupName"
# Charts of the dashboard: query -> (visual kind, category column, value column).
VISUALS: dict[str, tuple[str, str, str]] = {
    "fraud_rate_by_day": ("line", "day", "fraud_rate"),
    "alert_rate_by_day": ("line", "day", "alert_rate"),
    "alert_volume_vs_capacity": ("line", "day", "cases_opened"),
    "fraud_rate_by_channel": ("bar", "channel", "fraud_rate"),
    "fraud_rate_by_merchant_category": ("bar", "merchant_category", "fraud_rate"),
    "quarantine_reasons_over_time": ("bar", "reason", "quarantined_rows"),
    "score_distribution_by_model_version": ("bar", "bin_low", "transactions"),
    "alert_precision": ("bar", "severity", "precision"),
}


@dataclass(frozen=True)
class RlsRule:
    """Analyst group ``group`` sees rows whose ``field`` is one of ``values`` (none = all)."""

    group: str
    field: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuickSightConfig:
    """Account, the Athena workgroup and database, who owns and who views, refresh time."""

    account_id: str
    workgroup: str
    database: str
    owner_arn: str  # a QuickSight user or group ARN that administers the assets
    viewer_group_arns: tuple[str, ...] = ()
    rls_rules: tuple[RlsRule, ...] = ()
    prefix: str = "fraudops-dev"
    refresh_time: str = "06:00"
    timezone: str = "UTC"
    athena_role_arn: str = ""  # least-privilege role for the data source (else the service role)

    def data_source_id(self) -> str:
        return f"{self.prefix}-athena"

    def data_set_id(self, name: str) -> str:
        return f"{self.prefix}-{name.replace('_', '-')}"

    def arn(self, region: str, kind: str, resource_id: str) -> str:
        return f"arn:aws:quicksight:{region}:{self.account_id}:{kind}/{resource_id}"


@dataclass
class DeployReport:
    """What each resource did: ``created`` or ``updated``."""

    actions: dict[str, str] = field(default_factory=dict)


def quicksight_type(data_type: pa.DataType) -> str:
    """A result column's QuickSight custom-SQL type."""
    if pa.types.is_integer(data_type):
        return "INTEGER"
    if pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "DECIMAL"
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return "DATETIME"
    if pa.types.is_boolean(data_type):
        return "BIT"
    return "STRING"


def qualified_sql(query: NamedQuery, database: str, tables: set[str]) -> str:
    """The query with defaults inlined and lake tables qualified as ``database.table``.

    QuickSight's Athena custom SQL has no default database, so every lake table
    is qualified; CTE names are left alone.
    """
    tree = sqlglot.parse_one(query.with_literals(), read="athena")
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if table.name in tables and table.name not in ctes and not table.args.get("db"):
            table.set("db", exp.to_identifier(database))
    return tree.sql(dialect="athena", pretty=True)


def rls_sql(rules: tuple[RlsRule, ...]) -> tuple[str, list[str]]:
    """Custom SQL listing the RLS rules (one row per group and value) and its field names."""
    fields = sorted({rule.field for rule in rules})
    rows = []
    for rule in rules:
        for value in rule.values or ("",):  # an empty value grants every value of the field
            cells = [sql_literal(rule.group)] + [
                sql_literal(value if name == rule.field else "") for name in fields
            ]
            rows.append(f"({', '.join(cells)})")
    columns = ", ".join(f'"{name}"' for name in [RLS_GROUP_COLUMN, *fields])
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS rules ({columns})", fields


class QuickSightDeployer:
    """Create or update the QuickSight assets through a boto3 ``quicksight`` client."""

    def __init__(
        self,
        client: Any,
        config: QuickSightConfig,
        region: str,
        library: Mapping[str, NamedQuery],
        columns_of: Callable[[NamedQuery], pa.Schema],
        tables: set[str],
    ) -> None:
        self.client = client
        self.config = config
        self.region = region
        self.library = dict(sorted(library.items()))
        self.columns_of = columns_of
        self.tables = tables
        self.report = DeployReport()

    # --- helpers ----------------------------------------------------------------
    def _exists(self, describe: Callable[..., Any], **ids: str) -> bool:
        try:
            describe(AwsAccountId=self.config.account_id, **ids)
        except self.client.exceptions.ResourceNotFoundException:
            return False
        return True

    def _owner(self, actions: list[str]) -> list[dict[str, Any]]:
        return [{"Principal": self.config.owner_arn, "Actions": actions}]

    # --- resources --------------------------------------------------------------
    def deploy(self) -> DeployReport:
        """Every asset, in dependency order."""
        source_arn = self.ensure_data_source()
        rls_arn, rls_fields = self.ensure_rls_data_set(source_arn)
        data_sets, columns = {}, {}
        for name, query in self.library.items():
            columns[name] = self.columns_of(query).names
            data_sets[name] = self.ensure_data_set(name, query, source_arn, rls_arn, rls_fields)
            self.ensure_refresh_schedule(self.config.data_set_id(name))
        self.ensure_dashboard(data_sets, columns)
        return self.report

    def _athena_parameters(self) -> dict[str, str]:
        parameters = {"WorkGroup": self.config.workgroup}
        if self.config.athena_role_arn:
            parameters["RoleArn"] = self.config.athena_role_arn
        return parameters

    def ensure_data_source(self) -> str:
        source_id = self.config.data_source_id()
        request = {
            "AwsAccountId": self.config.account_id,
            "DataSourceId": source_id,
            "Name": f"{self.config.prefix} Athena ({self.config.workgroup})",
            "DataSourceParameters": {"AthenaParameters": self._athena_parameters()},
        }
        if self._exists(self.client.describe_data_source, DataSourceId=source_id):
            self.client.update_data_source(**request)
            self.report.actions[f"data-source/{source_id}"] = "updated"
        else:
            self.client.create_data_source(
                **request, Type="ATHENA", Permissions=self._owner(DATA_SOURCE_ACTIONS)
            )
            self.report.actions[f"data-source/{source_id}"] = "created"
        return self.config.arn(self.region, "datasource", source_id)

    def ensure_rls_data_set(self, source_arn: str) -> tuple[str | None, list[str]]:
        if not self.config.rls_rules:
            return None, []
        sql, fields = rls_sql(self.config.rls_rules)
        columns = [{"Name": RLS_GROUP_COLUMN, "Type": "STRING"}] + [
            {"Name": name, "Type": "STRING"} for name in fields
        ]
        data_set_id = self.config.data_set_id("rls-rules")
        self._put_data_set(data_set_id, "Analyst access rules (RLS)", source_arn, sql, columns,
                           extra={"UseAs": "RLS_RULES"})
        return self.config.arn(self.region, "dataset", data_set_id), fields

    def ensure_data_set(
        self,
        name: str,
        query: NamedQuery,
        source_arn: str,
        rls_arn: str | None,
        rls_fields: list[str],
    ) -> str:
        schema = self.columns_of(query)
        columns = [{"Name": f.name, "Type": quicksight_type(f.type)} for f in schema]
        extra: dict[str, Any] = {}
        if rls_arn and any(name in schema.names for name in rls_fields):
            extra["RowLevelPermissionDataSet"] = {
                "Arn": rls_arn, "PermissionPolicy": "GRANT_ACCESS", "FormatVersion": "VERSION_2",
                "Status": "ENABLED",
            }
        sql = qualified_sql(query, self.config.database, self.tables)
        data_set_id = self.config.data_set_id(name)
        self._put_data_set(data_set_id, query.title, source_arn, sql, columns, extra)
        return self.config.arn(self.region, "dataset", data_set_id)

    def _put_data_set(
        self, data_set_id: str, title: str, source_arn: str, sql: str,
        columns: list[dict[str, str]], extra: dict[str, Any],
    ) -> None:
        request = {
            "AwsAccountId": self.config.account_id,
            "DataSetId": data_set_id,
            "Name": title,
            "PhysicalTableMap": {
                "named-query": {
                    "CustomSql": {
                        "DataSourceArn": source_arn, "Name": data_set_id,
                        "SqlQuery": sql, "Columns": columns,
                    }
                }
            },
            "ImportMode": "SPICE",
            **extra,
        }
        if self._exists(self.client.describe_data_set, DataSetId=data_set_id):
            request.pop("UseAs", None)  # fixed at creation; UpdateDataSet rejects a change
            self.client.update_data_set(**request)
            self.report.actions[f"dataset/{data_set_id}"] = "updated"
        else:
            self.client.create_data_set(**request, Permissions=self._owner(DATA_SET_ACTIONS))
            self.report.actions[f"dataset/{data_set_id}"] = "created"

    def ensure_refresh_schedule(self, data_set_id: str) -> None:
        schedule = {
            "ScheduleId": REFRESH_SCHEDULE_ID,
            "ScheduleFrequency": {
                "Interval": "DAILY",
                "TimeOfTheDay": self.config.refresh_time,
                "Timezone": self.config.timezone,
            },
            "RefreshType": "FULL_REFRESH",
        }
        ids = {"AwsAccountId": self.config.account_id, "DataSetId": data_set_id}
        key = f"refresh-schedule/{data_set_id}/{REFRESH_SCHEDULE_ID}"
        try:
            self.client.describe_refresh_schedule(**ids, ScheduleId=REFRESH_SCHEDULE_ID)
        except self.client.exceptions.ResourceNotFoundException:
            self.client.create_refresh_schedule(**ids, Schedule=schedule)
            self.report.actions[key] = "created"
        else:
            self.client.update_refresh_schedule(**ids, Schedule=schedule)
            self.report.actions[key] = "updated"

    def ensure_dashboard(self, data_sets: dict[str, str], columns: dict[str, list[str]]) -> None:
        dashboard_id = f"{self.config.prefix}-fraud-operations"
        request = {
            "AwsAccountId": self.config.account_id,
            "DashboardId": dashboard_id,
            "Name": "Fraud operations",
            "Definition": dashboard_definition(data_sets, self.library, columns),
        }
        if self._exists(self.client.describe_dashboard, DashboardId=dashboard_id):
            response = self.client.update_dashboard(**request)
            version = int(response["VersionArn"].rsplit("/", 1)[-1])
            self.client.update_dashboard_published_version(
                AwsAccountId=self.config.account_id, DashboardId=dashboard_id, VersionNumber=version
            )
            self.report.actions[f"dashboard/{dashboard_id}"] = "updated"
            return
        permissions = self._owner(DASHBOARD_OWNER_ACTIONS) + [
            {"Principal": arn, "Actions": DASHBOARD_VIEWER_ACTIONS}
            for arn in self.config.viewer_group_arns
        ]
        self.client.create_dashboard(**request, Permissions=permissions)
        self.report.actions[f"dashboard/{dashboard_id}"] = "created"


def _title(text: str) -> dict[str, Any]:
    return {"Visibility": "VISIBLE", "FormatText": {"PlainText": text}}


def _visual(name: str, query: NamedQuery, columns: list[str]) -> dict[str, Any]:
    kind, category, value = VISUALS.get(name, ("table", "", ""))
    visual_id = name.replace("_", "-")
    column = {"DataSetIdentifier": name}
    if kind == "table":
        values = [{"FieldId": f"{visual_id}-{c}", "Column": {**column, "ColumnName": c}}
                  for c in columns]
        return {"TableVisual": {
            "VisualId": visual_id, "Title": _title(query.title),
            "ChartConfiguration": {"FieldWells": {"TableUnaggregatedFieldWells": {
                "Values": values}}}}}
    wells = {
        "Category": [{"CategoricalDimensionField": {
            "FieldId": f"{visual_id}-{category}", "Column": {**column, "ColumnName": category}}}],
        "Values": [{"NumericalMeasureField": {
            "FieldId": f"{visual_id}-{value}", "Column": {**column, "ColumnName": value},
            "AggregationFunction": {"SimpleNumericalAggregation": "SUM"}}}],
    }
    if kind == "line":
        return {"LineChartVisual": {
            "VisualId": visual_id, "Title": _title(query.title),
            "ChartConfiguration": {"FieldWells": {"LineChartAggregatedFieldWells": wells}}}}
    return {"BarChartVisual": {
        "VisualId": visual_id, "Title": _title(query.title),
        "ChartConfiguration": {"FieldWells": {"BarChartAggregatedFieldWells": wells}}}}


def dashboard_definition(
    data_sets: Mapping[str, str],
    library: Mapping[str, NamedQuery],
    columns: Mapping[str, list[str]],
) -> dict[str, Any]:
    """One sheet, one visual per named-query dataset (chart where ``VISUALS`` says, else table)."""
    return {
        "DataSetIdentifierDeclarations": [
            {"Identifier": name, "DataSetArn": arn} for name, arn in data_sets.items()
        ],
        "Sheets": [{
            "SheetId": "fraud-operations",
            "Name": "Fraud operations",
            "Visuals": [_visual(name, library[name], columns[name]) for name in data_sets],
        }],
    }
