"""Where people are told things: SNS on AWS, an outbox (and webhook) locally.

Alerts and failure notifications go through a :class:`Notifier`; the Lambda
handlers and the local runner never know which one they hold.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

ALERTS_TOPIC = "fraud-alerts"
FAILURES_TOPIC = "pipeline-failures"


class Notifier(Protocol):
    def publish(self, topic: str, subject: str, message: dict[str, Any]) -> str:
        """Deliver ``message``; return a message id."""
        ...


@dataclass
class OutboxNotifier:
    """Appends one JSON line per message to ``<outbox>/<topic>.jsonl``.

    An optional webhook URL also receives each message as a JSON POST; a
    webhook failure is recorded in the line, never lost or raised, since the
    outbox is the record of truth.
    """

    outbox: Path
    webhook_url: str | None = None
    timeout_seconds: float = 2.0

    def publish(self, topic: str, subject: str, message: dict[str, Any]) -> str:
        self.outbox.mkdir(parents=True, exist_ok=True)
        published_at = datetime.now(UTC).isoformat()
        message_id = f"{topic}-{published_at}"
        line: dict[str, Any] = {
            "id": message_id,
            "topic": topic,
            "subject": subject,
            "published_at": published_at,
            "message": message,
        }
        if self.webhook_url:
            line["webhook"] = self._post(line)
        with (self.outbox / f"{topic}.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\n")
        return message_id

    def _post(self, line: dict[str, Any]) -> str:
        body = json.dumps(line, default=str).encode()
        request = urllib.request.Request(
            self.webhook_url or "", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return f"delivered ({response.status})"
        except OSError as exc:
            return f"failed: {exc}"


@dataclass
class SnsNotifier:
    """Publishes to SNS topics named in ``topic_arns`` (topic name -> ARN)."""

    topic_arns: dict[str, str]
    client: Any = None

    def publish(self, topic: str, subject: str, message: dict[str, Any]) -> str:
        import boto3

        client = self.client or boto3.client("sns")
        try:
            arn = self.topic_arns[topic]
        except KeyError:
            raise KeyError(
                f"no SNS topic ARN configured for {topic!r}; set it in the stack outputs"
            ) from None
        response = client.publish(
            TopicArn=arn, Subject=subject[:100], Message=json.dumps(message, default=str)
        )
        return str(response["MessageId"])


def read_outbox(outbox: Path, topic: str) -> list[dict[str, Any]]:
    """Every message published locally to ``topic``, oldest first."""
    path = outbox / f"{topic}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
