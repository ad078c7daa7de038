"""The alert Lambda writes each alert's lake row exactly once, across Lambda's retries
(moto DynamoDB, SNS and S3)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_alerts  # noqa: E402

alert_lambda_aws = test_alerts.alert_lambda_aws  # the shared fixture

ROW = {"transaction_id": "tx-1", "card_id": "card-1", "customer_id": "c1", "terminal_id": "t1",
       "timestamp": "2026-03-01T10:00:00+00:00", "amount": 120.0, "score": 0.93,
       "model_version": 3, "reasons": ["large amount"]}
EVENT = {"scored": [ROW], "alert_threshold": 0.5, "model_package_arn": "arn:pkg/3"}


@pytest.fixture
def aws(alert_lambda_aws, monkeypatch):
    """test_alerts' moto state table and topic, and a lake bucket name (created later)."""
    monkeypatch.setenv("LAKE_BUCKET", "lake")
    return boto3.client("s3", region_name="us-east-1")


def _lake_rows(s3, table: str = "alerts") -> list[dict]:
    rows = []
    for listed in s3.list_objects_v2(Bucket="lake", Prefix=f"{table}/").get("Contents", []):
        body = s3.get_object(Bucket="lake", Key=listed["Key"])["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def test_a_retried_invocation_still_writes_the_lake_row_once(aws):
    from lambdas.alert.handler import handler

    # The first attempt raises the alert, then fails writing the lake (no bucket yet).
    with pytest.raises(Exception, match="NoSuchBucket"):
        handler(EVENT, None)
    aws.create_bucket(Bucket="lake")
    retried = handler(EVENT, None)  # Lambda's retry: deduplicated, but written
    assert retried["written"] == 1
    again = handler(EVENT, None)  # a redelivery after success writes nothing
    assert "written" not in again
    rows = _lake_rows(aws)
    assert [r["transaction_id"] for r in rows] == ["tx-1"]
    assert rows[0]["score"] == 0.93


def test_a_primary_alert_opens_its_case_once_and_a_retry_never_reopens_it(aws):
    from lambdas.alert.handler import handler
    from pipelines.data.lake.ddl import athena_tables, table_location
    from pipelines.data.lake.tables import CASES_SCHEMA
    from pipelines.serving.alerts.lake_queue import LakeCaseQueue

    aws.create_bucket(Bucket="lake")
    first = handler(EVENT, None)
    assert first["cases_opened"] == 1
    [alert] = _lake_rows(aws)
    [listed] = aws.list_objects_v2(Bucket="lake", Prefix="cases/")["Contents"]
    # Under the location the Athena DDL declares for the cases table, readable with its schema.
    assert f"s3://lake/{listed['Key']}".startswith(table_location(athena_tables()["cases"], "lake"))
    body = aws.get_object(Bucket="lake", Key=listed["Key"])["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.names == CASES_SCHEMA.names
    assert table.cast(CASES_SCHEMA).to_pylist()[0]["status"] == "open"
    [case] = table.to_pylist()
    assert case["case_id"] == case["alert_id"] == alert["alert_id"]

    # An investigator closes it; then Lambda redelivers the batch after a lost
    # in_lake mark: the alert row is rewritten, the case is not reopened.
    LakeCaseQueue(aws, "lake").close(case["case_id"], "confirmed_fraud", actor="ann")
    table_item = boto3.resource("dynamodb", region_name="us-east-1").Table("state")
    table_item.update_item(Key={"entity": "alerted#tx-1"}, UpdateExpression="SET in_lake = :no",
                           ExpressionAttributeValues={":no": False})
    retried = handler(EVENT, None)
    assert retried["written"] == 1 and retried["cases_opened"] == 0
    [case] = _lake_rows(aws, "cases")
    assert (case["status"], case["disposition"], case["closed_by"]) == (
        "closed", "confirmed_fraud", "ann")
    assert case["disposition_is_fraud"] == 1
