"""Lambda: scored transactions -> deduplicated alerts, SNS, and the lake's alerts table.

Invoked by the stream-scoring function with ``{"scored": [row, ...],
"alert_threshold": t, "model_package_arn": arn}``: the threshold is the one the
deployed model package carries (its CustomerMetadataProperties), sent with the
scores it applies to, so this function has no threshold of its own to drift.
New alerts are also written as Parquet under ``s3://$LAKE_BUCKET/alerts/dt=.../``,
so Athena's ``alerts`` table and the QuickSight datasets see them as the
local export does: exactly once, also when Lambda retries an invocation that
failed after raising an alert but before writing it (one object per alert,
named by its transaction, then marked written in DynamoDB). A primary alert
also opens its case in the lake's ``cases`` table (``cases/case-<alert id>.parquet``,
created only if absent, so a retry never reopens a case already being worked).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

from pipelines.core.notifications import ALERTS_TOPIC, SnsNotifier
from pipelines.core.params import check_alert_threshold
from pipelines.serving.alerts.alerting import AlertPolicy, raise_alerts
from pipelines.serving.alerts.dynamo import DynamoAlertStore
from pipelines.serving.alerts.lake_cases import open_case


def handler(event: dict[str, Any], context: object) -> dict[str, int]:
    import boto3

    if event.get("alert_threshold") is None:
        raise ValueError("the event carries no alert_threshold: send the scoring model's "
                         "threshold with its scores, as the stream-scoring function does")
    where = f"the event's alert_threshold (model package {event.get('model_package_arn')})"
    policy = AlertPolicy(threshold=check_alert_threshold(event["alert_threshold"], where))
    store = DynamoAlertStore(boto3.resource("dynamodb").Table(os.environ["STATE_TABLE"]))
    notifier = SnsNotifier({ALERTS_TOPIC: os.environ["ALERTS_TOPIC_ARN"]})
    counts = raise_alerts(event.get("scored", []), policy, store, notifier)
    if store.unwritten and os.environ.get("LAKE_BUCKET"):
        s3, bucket = boto3.client("s3"), os.environ["LAKE_BUCKET"]
        counts["written"] = write_to_lake(s3, bucket, store.unwritten)
        counts["cases_opened"] = sum(open_case(s3, bucket, alert) for alert in store.unwritten
                                     if alert.get("grouped_into") is None)
        store.mark_in_lake(store.unwritten)
    print(json.dumps(counts))
    return counts


def write_to_lake(s3: Any, bucket: str, alerts: list[dict[str, Any]]) -> int:
    """One Parquet object per alert, named by its transaction: a rewrite replaces it."""
    import pyarrow.parquet as pq

    from pipelines.analytics.exports import alerts_table

    table = alerts_table(alerts)
    for index in range(table.num_rows):
        row = table.slice(index, 1)
        day = row.column("dt")[0].as_py()
        transaction = row.column("transaction_id")[0].as_py()
        name = hashlib.sha256(transaction.encode()).hexdigest()[:24]
        buffer = io.BytesIO()
        pq.write_table(row.drop_columns(["dt"]), buffer, compression="zstd")
        s3.put_object(Bucket=bucket, Key=f"alerts/dt={day}/alert-{name}.parquet",
                      Body=buffer.getvalue())
    return table.num_rows
