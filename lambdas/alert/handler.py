"""Lambda: scored transactions -> deduplicated alerts, SNS, and the lake's alerts table.

Invoked by the stream-scoring function with ``{"scored": [row, ...],
"alert_threshold": t, "model_package_arn": arn}``: the threshold is the one the
deployed model package carries (its CustomerMetadataProperties), sent with the
scores it applies to, so this function has no threshold of its own to drift.
New alerts are also written as Parquet under ``s3://$LAKE_BUCKET/alerts/dt=.../``,
so Athena's ``alerts`` table and the QuickSight datasets see them as the
local export does.
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
    if store.added and os.environ.get("LAKE_BUCKET"):
        counts["written"] = write_to_lake(boto3.client("s3"), os.environ["LAKE_BUCKET"],
                                          store.added)
    print(json.dumps(counts))
    return counts


def write_to_lake(s3: Any, bucket: str, alerts: list[dict[str, Any]]) -> int:
    """One Parquet object per day, named by its content (a retried batch rewrites it)."""
    import pyarrow.parquet as pq

    from pipelines.analytics.exports import alerts_table

    table = alerts_table(alerts)
    written = 0
    for day in sorted(set(table.column("dt").to_pylist())):
        rows = table.filter(table.column("dt").to_numpy(zero_copy_only=False) == day)
        ids = ",".join(sorted(rows.column("transaction_id").to_pylist()))
        name = hashlib.sha256(ids.encode()).hexdigest()[:16]
        buffer = io.BytesIO()
        pq.write_table(rows.drop_columns(["dt"]), buffer, compression="zstd")
        s3.put_object(Bucket=bucket, Key=f"alerts/dt={day}/alerts-{name}.parquet",
                      Body=buffer.getvalue())
        written += rows.num_rows
    return written
