"""Alert deduplication state in DynamoDB, for the alert Lambda on AWS.

Keeps, per card, the card's current primary alert (item ``alert#<card>``) and
one item per alerted transaction (``alerted#<transaction>``) so a retried
Lambda batch never raises the same alert twice. Cases are worked from the
``alerts`` table in the lake; this store only answers "is this card already
under an alert?".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class DynamoAlertStore:
    table: Any  # a boto3 DynamoDB Table resource
    added: list[dict[str, Any]] = field(default_factory=list)  # this invocation's new alerts

    def last_alert_for_card(self, card_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"entity": f"alert#{card_id}"}).get("Item")
        return json.loads(item["alert"]) if item else None

    def add_alert(self, alert: dict[str, Any], grouped_into: int | None = None) -> int | None:
        from botocore.exceptions import ClientError

        try:
            self.table.put_item(
                Item={"entity": f"alerted#{alert['transaction_id']}", "card": alert["card_id"]},
                ConditionExpression="attribute_not_exists(entity)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        # A stable id across Lambda invocations (hash() is salted per process), kept
        # under 13 digits so no id can ever look like a card number.
        digest = hashlib.sha256(alert["transaction_id"].encode()).hexdigest()
        alert_id = int(digest[:12], 16) % 10**12
        self.added.append({**alert, "alert_id": alert_id, "grouped_into": grouped_into,
                           "raised_at": datetime.now(UTC).isoformat()})
        if grouped_into is None:
            stored = {**alert, "alert_id": alert_id}
            self.table.put_item(Item={"entity": f"alert#{alert['card_id']}",
                                      "alert": json.dumps(stored, default=str)})
        return alert_id
