"""The AWS path: run named queries and DDL on Athena, keep the named-query library there.

``AthenaRunner`` wraps a boto3 Athena client: ``start_query_execution`` in the
project's workgroup (with a result location), polling ``get_query_execution``
until the query ends, then ``get_query_results`` page by page into a typed
Arrow table. Named queries are sent as ``?`` placeholders with
``ExecutionParameters``, so values are bound by Athena, never pasted into SQL.
Where the stacks put things (database, workgroup, buckets) is read from the
CloudFormation exports of ``infra/catalog.yaml`` and ``infra/storage.yaml``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.data.lake.ddl import DEFAULT_PROJECTION_START, all_ddl
from pipelines.data.lake.named_queries import NamedQuery

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
# Athena result types -> Arrow; anything else (varchar, ...) stays text. Timestamps
# arrive as "2026-03-03 09:00:00.000" in UTC (the lake stores UTC instants), and
# become UTC timestamps as DuckDB returns them locally; dates become dates.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "tinyint": pa.int64(), "smallint": pa.int64(), "integer": pa.int64(), "bigint": pa.int64(),
    "float": pa.float64(), "real": pa.float64(), "double": pa.float64(),
    "decimal": pa.float64(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}
_UTC = pa.timestamp("us", tz="UTC")


class AthenaQueryError(RuntimeError):
    """A query failed, was cancelled or timed out; the message carries Athena's reason."""


@dataclass(frozen=True)
class AthenaTarget:
    """Where queries run and read: Glue database, workgroup, lake and results locations."""

    database: str
    workgroup: str
    lake_bucket: str
    output_location: str
    quicksight_role_arn: str = ""  # the role QuickSight assumes to query (catalog stack)
    records_bucket: str = ""  # the Object-Lock records bucket (storage stack)


def resolve_target(cloudformation: Any, env: str, project: str = "fraudops") -> AthenaTarget:
    """Read the database, workgroup and buckets of environment ``env`` from stack exports."""
    exports: dict[str, str] = {}
    for page in cloudformation.get_paginator("list_exports").paginate():
        exports.update({e["Name"]: e["Value"] for e in page.get("Exports", [])})
    prefix = f"{project}-{env}-"
    wanted = ("GlueDatabase", "AthenaWorkgroup", "LakeBucket", "ArtifactsBucket")
    missing = [name for name in wanted if prefix + name not in exports]
    if missing:
        raise AthenaQueryError(
            f"CloudFormation exports {', '.join(prefix + m for m in missing)} not found: deploy "
            f"the stacks first (`fraudops infra deploy --env {env}`)"
        )
    return AthenaTarget(
        database=exports[prefix + "GlueDatabase"],
        workgroup=exports[prefix + "AthenaWorkgroup"],
        lake_bucket=exports[prefix + "LakeBucket"],
        output_location=f"s3://{exports[prefix + 'ArtifactsBucket']}/athena-results/",
        quicksight_role_arn=exports.get(prefix + "QuickSightAthenaRoleArn", ""),
        records_bucket=exports.get(prefix + "RecordsBucket", ""),
    )


class AthenaRunner:
    """Run SQL on Athena and collect the results; ``sleep`` is injectable for tests."""

    def __init__(
        self,
        client: Any,
        target: AthenaTarget,
        poll_seconds: float = 1.0,
        timeout_seconds: float = 900.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.target = target
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep

    def start(self, sql: str, execution_parameters: list[str] | None = None) -> str:
        """Start one query in the workgroup; return its execution id."""
        request: dict[str, Any] = {
            "QueryString": sql,
            "QueryExecutionContext": {"Database": self.target.database},
            "WorkGroup": self.target.workgroup,
            "ResultConfiguration": {"OutputLocation": self.target.output_location},
        }
        if execution_parameters:
            request["ExecutionParameters"] = execution_parameters
        return self.client.start_query_execution(**request)["QueryExecutionId"]

    def wait(self, query_id: str) -> dict[str, Any]:
        """Poll until the query ends; raise ``AthenaQueryError`` unless it succeeded."""
        waited = 0.0
        while True:
            execution = self.client.get_query_execution(QueryExecutionId=query_id)
            status = execution["QueryExecution"]["Status"]
            if status["State"] in TERMINAL_STATES:
                break
            if waited >= self.timeout_seconds:
                self.client.stop_query_execution(QueryExecutionId=query_id)
                raise AthenaQueryError(
                    f"query {query_id} still {status['State']} after {self.timeout_seconds:.0f} s;"
                    " stopped it"
                )
            self.sleep(self.poll_seconds)
            waited += self.poll_seconds
        if status["State"] != "SUCCEEDED":
            reason = status.get("StateChangeReason") or status.get("AthenaError", {}).get(
                "ErrorMessage", "no reason given"
            )
            raise AthenaQueryError(f"query {query_id} {status['State']}: {reason}")
        return execution["QueryExecution"]

    def results(self, query_id: str) -> pa.Table:
        """Every result row (all pages) as an Arrow table typed from Athena's column types."""
        columns: list[dict[str, Any]] = []
        rows: list[list[str | None]] = []
        token: str | None = None
        first_page = True
        while True:
            request: dict[str, Any] = {"QueryExecutionId": query_id, "MaxResults": 1000}
            if token:
                request["NextToken"] = token
            page = self.client.get_query_results(**request)
            result = page["ResultSet"]
            if first_page:
                columns = result["ResultSetMetadata"]["ColumnInfo"]
            data = [[cell.get("VarCharValue") for cell in row["Data"]] for row in result["Rows"]]
            # A SELECT's first row on the first page repeats the column names.
            if first_page and data and data[0] == [c["Name"] for c in columns]:
                data = data[1:]
            rows.extend(data)
            first_page = False
            token = page.get("NextToken")
            if not token:
                break
        return _to_arrow(columns, rows)

    def run(self, sql: str, execution_parameters: list[str] | None = None) -> pa.Table:
        """Start, wait, fetch: one query's rows."""
        query_id = self.start(sql, execution_parameters)
        self.wait(query_id)
        return self.results(query_id)

    def run_named(self, query: NamedQuery, params: dict[str, object] | None = None) -> pa.Table:
        """A named query with its parameters bound as Athena execution parameters."""
        sql, execution_parameters = query.positional(params)
        return self.run(sql, execution_parameters)

    def create_tables(
        self, projection_start: str = DEFAULT_PROJECTION_START
    ) -> dict[str, str]:
        """Run ``CREATE EXTERNAL TABLE IF NOT EXISTS`` for every lake table; ids by table."""
        ids = {}
        for name, ddl in all_ddl(
            self.target.database, self.target.lake_bucket, projection_start
        ).items():
            ids[name] = self.start(ddl)
            self.wait(ids[name])
        return ids

    def sync_named_queries(self, library: dict[str, NamedQuery]) -> dict[str, str]:
        """Create or update the workgroup's named queries so they match the library.

        Idempotent: an unchanged query is left alone, a changed one updated in
        place (same id), a new one created. Returns ``name -> created|updated|unchanged``.
        """
        existing = self._named_queries()
        outcome = {}
        for name, query in sorted(library.items()):
            sql, _ = query.positional()
            description = _description(query)
            current = existing.get(name)
            if current is None:
                self.client.create_named_query(
                    Name=name, Description=description, Database=self.target.database,
                    QueryString=sql, WorkGroup=self.target.workgroup,
                )
                outcome[name] = "created"
            elif current["QueryString"] != sql or current.get("Description") != description:
                self.client.update_named_query(
                    NamedQueryId=current["NamedQueryId"], Name=name,
                    Description=description, QueryString=sql,
                )
                outcome[name] = "updated"
            else:
                outcome[name] = "unchanged"
        return outcome

    def _named_queries(self) -> dict[str, dict[str, Any]]:
        ids: list[str] = []
        token: str | None = None
        while True:
            request: dict[str, Any] = {"WorkGroup": self.target.workgroup, "MaxResults": 50}
            if token:
                request["NextToken"] = token
            page = self.client.list_named_queries(**request)
            ids.extend(page.get("NamedQueryIds", []))
            token = page.get("NextToken")
            if not token:
                break
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 50):  # BatchGetNamedQuery takes at most 50 ids
            batch = self.client.batch_get_named_query(NamedQueryIds=ids[start:start + 50])
            found.update({q["Name"]: q for q in batch.get("NamedQueries", [])})
        return found


def _description(query: NamedQuery) -> str:
    """Title, question and the order of the ``?`` parameters (Athena's limit: 1024 chars)."""
    params = "; ".join(f"{p.name} ({p.type}, default {p.default!r})" for p in query.params)
    text = f"{query.title}: {query.answers}" + (f" Parameters in order: {params}" if params else "")
    return text[:1024]


def _to_arrow(columns: list[dict[str, Any]], rows: list[list[str | None]]) -> pa.Table:
    arrays = {}
    for index, column in enumerate(columns):
        arrow_type = _ARROW_TYPES.get(column["Type"].lower(), pa.string())
        values = [row[index] for row in rows]
        if arrow_type == pa.bool_():
            arrays[column["Name"]] = pa.array(
                [None if v is None else v.lower() == "true" for v in values], pa.bool_()
            )
        elif arrow_type == pa.timestamp("us"):
            arrays[column["Name"]] = pa.array(values, pa.string()).cast(arrow_type).cast(_UTC)
        else:
            arrays[column["Name"]] = pa.array(values, pa.string()).cast(arrow_type)
    return pa.table(arrays) if arrays else pa.table({})
