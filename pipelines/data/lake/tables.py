"""Schemas and locations of the lake tables written after ingestion.

The curated and quarantine schemas live with the canonical transaction in
``pipelines.core.schema``; these are the tables the serving and analytics
layers write (scores, alerts, cases). One definition each, read by the writers,
the Athena DDL and the QuickSight datasets alike.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipelines.core.schema import PARTITION_COLUMN
from pipelines.core.workspace import Workspace

SCORED_TABLE = "scored"
SCORED_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        # Null for data without card or terminal ids (ingest stores them null).
        pa.field("customer_id", pa.string()),
        pa.field("terminal_id", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

ALERTS_TABLE, CASES_TABLE = "alerts", "cases"
ALERTS_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.int64(), nullable=False),
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("terminal_id", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("tx_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("reasons", pa.string()),  # JSON list, as stored by the queue
        pa.field("raised_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("grouped_into", pa.int64()),
        pa.field(PARTITION_COLUMN, pa.string(), nullable=False),
    ]
)
CASES_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.int64(), nullable=False),
        pa.field("alert_id", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("assignee", pa.string()),
        pa.field("disposition", pa.string()),
        pa.field("disposition_is_fraud", pa.int8()),
        pa.field("opened_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("closed_at", pa.timestamp("us", tz="UTC")),
        # Who closed it (the SAR narrative names them); the case history stays in the audit trail.
        pa.field("closed_by", pa.string()),
    ]
)


def alerts_dir(ws: Workspace) -> Path:
    return ws.lake / ALERTS_TABLE


def cases_dir(ws: Workspace) -> Path:
    return ws.lake / CASES_TABLE
