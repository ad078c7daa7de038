"""Fraud alerts and the investigators' case queue.

``raise_alerts`` turns scores at or above the threshold into deduplicated,
severity-ranked alerts with reasons; each alert opens a case that moves
open -> in_review -> closed, and a closing disposition becomes a label.
"""

from pipelines.serving.alerts.alerting import AlertPolicy, raise_alerts, severity_of
from pipelines.serving.alerts.cases import DISPOSITIONS, CaseError, CaseQueue

__all__ = [
    "DISPOSITIONS",
    "AlertPolicy",
    "CaseError",
    "CaseQueue",
    "raise_alerts",
    "severity_of",
]
