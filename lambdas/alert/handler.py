"""Lambda: scored transactions -> deduplicated alerts, published to SNS.

Invoked by the stream-scoring function with ``{"scored": [row, ...]}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines.alerts.alerting import AlertPolicy, raise_alerts
from pipelines.alerts.dynamo import DynamoAlertStore
from pipelines.notifications import ALERTS_TOPIC, SnsNotifier


def handler(event: dict[str, Any], context: object) -> dict[str, int]:
    import boto3

    policy = AlertPolicy(threshold=float(os.environ.get("ALERT_THRESHOLD", "0.5")))
    table = boto3.resource("dynamodb").Table(os.environ["STATE_TABLE"])
    notifier = SnsNotifier({ALERTS_TOPIC: os.environ["ALERTS_TOPIC_ARN"]})
    counts = raise_alerts(event.get("scored", []), policy, DynamoAlertStore(table), notifier)
    print(json.dumps(counts))
    return counts
