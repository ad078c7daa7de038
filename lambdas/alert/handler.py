"""Lambda: scored transactions -> deduplicated alerts, SNS, and the lake's alerts table.

Invoked by the stream-scoring function with ``{"scored": [row, ...]}``. New
alerts are also written as Parquet under ``s3://$LAKE_BUCKET/alerts/dt=.../``,
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
from pipelines.serving.alerts.alerting import AlertPolicy, raise_alerts
from pipelines.serving.alerts.dynamo import DynamoAlertStore


def handler(event: dict[str, Any], context: object) -> dict[str, int]:
    import boto3

    policy = AlertPolicy(threshold=float(os.environ.get("ALERT_THRESHOLD", "0.5")))
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
