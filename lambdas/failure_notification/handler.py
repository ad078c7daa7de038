"""Lambda: a failed pipeline step, ETL run or workflow -> a notification.

On AWS it publishes to the SNS topic in ``FAILURES_TOPIC_ARN``; on the local
event bus (a context naming the workspace) it writes to the workspace outbox.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.core.failures import notify_failure
from pipelines.core.notifications import FAILURES_TOPIC, Notifier, OutboxNotifier, SnsNotifier


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    sent = notify_failure(event, _notifier(context))
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # CloudWatch Logs; locally the outbox has it
        print(json.dumps({"notified": sent}))
    return sent


def _notifier(context: object) -> Notifier:
    workspace_root = getattr(context, "workspace_root", None)
    if workspace_root:
        from pipelines.core.workspace import Workspace

        return OutboxNotifier(Workspace(root=Path(workspace_root)).outbox)
    return SnsNotifier({FAILURES_TOPIC: os.environ["FAILURES_TOPIC_ARN"]})
