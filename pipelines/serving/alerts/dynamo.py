"""Alert deduplication state in DynamoDB, for the alert Lambda on AWS.

Keeps, per card, the card's current primary alert (item ``alert#<card>``) and
one item per alerted transaction (``alerted#<transaction>``) so a retried
Lambda batch never raises the same alert twice. The ``alerted#`` item keeps the
alert's row and whether it reached the lake's ``alerts`` table (``in_lake``):
an invocation that failed between the two leaves it pending, and the retry
writes it (:attr:`DynamoAlertStore.unwritten`) without raising it again. Cases
are worked from the ``alerts`` table; this store only answers "is this card
already under an alert?".
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
    # Alerts an earlier invocation raised but did not get into the lake (it failed between).
    pending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unwritten(self) -> list[dict[str, Any]]:
        """Every alert row the lake still lacks: this invocation's and earlier ones'."""
        return [*self.added, *self.pending]

    def last_alert_for_card(self, card_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"entity": f"alert#{card_id}"}).get("Item")
        return json.loads(item["alert"]) if item else None

    def add_alert(self, alert: dict[str, Any], grouped_into: int | None = None) -> int | None:
        from botocore.exceptions import ClientError

        # A stable id across Lambda invocations (hash() is salted per process), kept
        # under 13 digits so no id can ever look like a card number.
        digest = hashlib.sha256(alert["transaction_id"].encode()).hexdigest()
        alert_id = int(digest[:12], 16) % 10**12
        row = {**alert, "alert_id": alert_id, "grouped_into": grouped_into,
               "raised_at": datetime.now(UTC).isoformat()}
        key = f"alerted#{alert['transaction_id']}"
        try:
            self.table.put_item(
                Item={"entity": key, "card": alert["card_id"], "in_lake": False,
                      "row": json.dumps(row, default=str)},
                ConditionExpression="attribute_not_exists(entity)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            stored = self.table.get_item(Key={"entity": key}, ConsistentRead=True).get("Item")
            if stored and not stored.get("in_lake", True) and "row" in stored:
                self.pending.append(json.loads(stored["row"]))
            return None
        self.added.append(row)
        if grouped_into is None:
            stored = {**alert, "alert_id": alert_id}
            self.table.put_item(Item={"entity": f"alert#{alert['card_id']}",
                                      "alert": json.dumps(stored, default=str)})
        return alert_id

    def mark_in_lake(self, rows: list[dict[str, Any]]) -> None:
        """Record that these rows are in the lake: a later retry leaves them alone."""
        for row in rows:
            self.table.update_item(
                Key={"entity": f"alerted#{row['transaction_id']}"},
                UpdateExpression="SET in_lake = :yes", ExpressionAttributeValues={":yes": True},
            )
