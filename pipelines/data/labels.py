"""Labels that arrive after the transaction: chargebacks, investigator dispositions.

Each label carries the time it became known (``label_known_at``), which is
what the label-delayed terminal-risk features respect. Labels land in the
lake (``Workspace.labels``, one Parquet file per arrival batch, partitioned by
the day they became known); the latest label per transaction wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.fileio import atomic_path
from pipelines.core.workspace import Workspace

LABEL_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.int8(), nullable=False),
        pa.field("label_known_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("label_source", pa.string()),
    ]
)


def write_labels(ws: Workspace, labels: Sequence[dict[str, Any]]) -> list[Path]:
    """Append a batch of labels; writing the same batch again changes nothing."""
    if not labels:
        return []
    rows = [_validated(label, index) for index, label in enumerate(labels, start=1)]
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["label_known_at"].date().isoformat(), []).append(row)
    written = []
    for day, day_rows in sorted(by_day.items()):
        table = pa.Table.from_pylist(day_rows, schema=LABEL_SCHEMA)
        digest = hashlib.sha256(
            json.dumps(day_rows, default=str, sort_keys=True).encode()
        ).hexdigest()[:16]
        path = ws.labels / f"dt={day}" / f"labels-{digest}.parquet"
        if not path.exists():
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        written.append(path)
    return written


def read_labels(ws: Workspace) -> pa.Table:
    """Every label, the latest per transaction (by ``label_known_at``).

    Reads every Parquet file under the labels zone, whoever wrote it (feedback,
    case dispositions, or a file dropped there by hand); ``label_source`` is
    optional in such files.
    """
    files = sorted(p for p in ws.labels.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return LABEL_SCHEMA.empty_table()
    table = pa.concat_tables(_conformed(pq.read_table(f), f) for f in files)
    import duckdb

    con = duckdb.connect()
    con.register("labels", table)
    return con.sql(
        "SELECT * FROM labels QUALIFY row_number() OVER "
        "(PARTITION BY transaction_id ORDER BY label_known_at DESC, label_source DESC) = 1 "
        "ORDER BY label_known_at, transaction_id"
    ).to_arrow_table().cast(LABEL_SCHEMA)


def _conformed(table: pa.Table, path: Path) -> pa.Table:
    missing = [f.name for f in LABEL_SCHEMA if f.name not in table.column_names
               and f.name != "label_source"]
    if missing:
        raise ValueError(f"{path}: labels file lacks column(s) {missing}; "
                         "expected transaction_id, is_fraud, label_known_at")
    if "label_source" not in table.column_names:
        table = table.append_column("label_source", pa.array([path.name] * table.num_rows))
    return table.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA)


def _validated(label: dict[str, Any], index: int) -> dict[str, Any]:
    where = f"label {index} ({label.get('transaction_id', 'no transaction_id')})"
    if not label.get("transaction_id"):
        raise ValueError(f"{where}: transaction_id is required")
    if str(label.get("is_fraud")) not in {"0", "1", "True", "False"}:
        raise ValueError(f"{where}: is_fraud must be 0 or 1, got {label.get('is_fraud')!r}")
    known = label.get("label_known_at")
    if not known:
        raise ValueError(f"{where}: label_known_at (when the label became known) is required")
    known_at = known if isinstance(known, datetime) else datetime.fromisoformat(
        str(known).replace("Z", "+00:00"))
    if known_at.tzinfo is None:
        raise ValueError(f"{where}: label_known_at must carry a time zone (UTC), got {known!r}")
    return {
        "transaction_id": str(label["transaction_id"]),
        "is_fraud": int(str(label["is_fraud"]) in {"1", "True"}),
        "label_known_at": known_at,
        "label_source": str(label.get("label_source") or "feedback"),
    }
