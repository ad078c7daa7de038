"""Scores at or above the alert threshold become alerts people can act on.

The same function runs in the alert Lambda on AWS and in-process locally.
Alerts are deduplicated per card within a window: a card already under an
open alert does not page anyone again, its new transaction is grouped under
the first alert so the investigator sees the whole burst in one case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pipelines.core.notifications import ALERTS_TOPIC, Notifier
from pipelines.core.params import check_alert_threshold

# Cash at or above the CTR threshold is high severity whatever the score.
LARGE_AMOUNT = 10_000.0


class AlertStore(Protocol):
    """Where alerts are kept: the local case queue, or DynamoDB on AWS."""

    def last_alert_for_card(self, card_id: str) -> dict[str, Any] | None: ...

    def add_alert(self, alert: dict[str, Any], grouped_into: int | None = None) -> int | None: ...


@dataclass(frozen=True)
class AlertPolicy:
    """When a score alerts. ``threshold`` has no default: it is the scoring model's
    (its package's ``alert_threshold``, pipelines.core.params)."""

    threshold: float
    high_threshold: float = 0.9
    dedupe_window: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        check_alert_threshold(self.threshold, "AlertPolicy.threshold")


def severity_of(score: float, amount: float | None, policy: AlertPolicy) -> str:
    """high: very likely fraud or a large amount; medium: above the alert threshold."""
    if score >= policy.high_threshold or (amount or 0.0) >= LARGE_AMOUNT:
        return "high"
    return "medium"


NO_CARD_PREFIX = "no-card:"  # the card_id of an alert on a transaction without a card id


def raise_alerts(
    scored: Iterable[Mapping[str, Any]],
    policy: AlertPolicy,
    queue: AlertStore,
    notifier: Notifier,
) -> dict[str, int]:
    """Alert on each scored transaction at or above the threshold, in time order.

    Each row needs ``transaction_id``, ``customer_id`` (the card), ``timestamp``
    and ``score``; ``terminal_id``, ``amount``, ``model_version`` and
    ``reasons`` are carried when present. Returns counts of what happened.
    """
    counts = {"scored": 0, "alerts": 0, "grouped": 0, "already_raised": 0, "notified": 0}
    candidates = []
    for row in scored:
        counts["scored"] += 1
        if float(row["score"]) >= policy.threshold:
            candidates.append(row)
    candidates.sort(key=lambda r: _timestamp(r["timestamp"]))
    for row in candidates:
        alert = _alert(row, policy)
        primary = queue.last_alert_for_card(alert["card_id"])
        grouped_into = None
        if primary is not None:
            elapsed = _timestamp(alert["tx_timestamp"]) - _timestamp(primary["tx_timestamp"])
            if timedelta(0) <= elapsed <= policy.dedupe_window:
                grouped_into = int(primary["alert_id"])
        alert_id = queue.add_alert(alert, grouped_into=grouped_into)
        if alert_id is None:
            counts["already_raised"] += 1
        elif grouped_into is not None:
            counts["grouped"] += 1
        else:
            counts["alerts"] += 1
            notifier.publish(ALERTS_TOPIC, _subject(alert), {**alert, "alert_id": alert_id})
            counts["notified"] += 1
    return counts


def _alert(row: Mapping[str, Any], policy: AlertPolicy) -> dict[str, Any]:
    score = float(row["score"])
    amount = None if row.get("amount") is None else float(row["amount"])
    return {
        "transaction_id": str(row["transaction_id"]),
        # Without a card id each alert stands alone (grouping by card would merge them all).
        "card_id": (str(row["customer_id"]) if row.get("customer_id") is not None
                    else f"{NO_CARD_PREFIX}{row['transaction_id']}"),
        "terminal_id": None if row.get("terminal_id") is None else str(row["terminal_id"]),
        "amount": amount,
        "tx_timestamp": _timestamp(row["timestamp"]).isoformat(),
        "score": round(score, 6),  # people read it; 16-digit floats also look like PANs
        "severity": severity_of(score, amount, policy),
        "model_version": None if row.get("model_version") is None else str(row["model_version"]),
        "reasons": list(row.get("reasons") or []),
    }


def _subject(alert: Mapping[str, Any]) -> str:
    return (f"[{alert['severity'].upper()}] possible fraud on card {alert['card_id']}: "
            f"score {alert['score']:.2f}")


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
