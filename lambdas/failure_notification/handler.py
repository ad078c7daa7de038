"""Lambda: a failed pipeline step, ETL run or workflow -> SNS notification."""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines.failures import notify_failure
from pipelines.notifications import FAILURES_TOPIC, SnsNotifier


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    topic_arn = os.environ["FAILURES_TOPIC_ARN"]
    sent = notify_failure(event, SnsNotifier({FAILURES_TOPIC: topic_arn}))
    print(json.dumps({"notified": sent}))
    return sent
