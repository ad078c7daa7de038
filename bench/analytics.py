"""Analytics: each named Athena query on the local lake, and the dashboard render.

Targets: every named query <= 1 s locally at ``size`` curated (and scored)
transactions; the whole dashboard (all queries + figures + HTML) <= 10 s.
The lake is synthetic but has the real schemas and layout: ``size``
transactions over 60 day partitions, the same rows scored, a quarantine zone
and a few hundred alerts/cases exported from the SQLite queue.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import precision_recall_curve

from bench._harness import Result, median_seconds
from pipelines.analytics.dashboard import render_dashboard
from pipelines.analytics.exports import export_queue
from pipelines.analytics.runner import run_named_query
from pipelines.core.params import DEFAULT_ALERT_THRESHOLD
from pipelines.core.schema import CHANNELS, CURATED_SCHEMA, QUARANTINE_SCHEMA
from pipelines.core.workspace import Workspace
from pipelines.data.lake.catalog import refresh_catalog
from pipelines.data.lake.named_queries import load_library
from pipelines.serving.alerts.cases import CaseQueue
from pipelines.serving.scoring.batch import SCORED_SCHEMA

AREA = "analytics"
DAYS = 60
START = datetime(2026, 1, 1, tzinfo=UTC)
ALERTS = 400
QUERY_TARGET_S, DASHBOARD_TARGET_S = 1.0, 10.0


def _columns(size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    offsets = np.sort(rng.integers(0, DAYS * 86_400_000_000, size))
    is_fraud = (rng.random(size) < 0.01).astype(np.int8)
    # Fraud scores high more often than legitimate traffic, as a trained model would.
    score = np.where(is_fraud == 1, rng.beta(4, 2, size), rng.beta(0.3, 12, size))
    return {"offset_us": offsets, "is_fraud": is_fraud, "score": score,
            "terminal": rng.integers(0, max(size // 100, 10), size),
            "channel": rng.integers(0, len(CHANNELS), size),
            "mcc": rng.choice([5411, 5812, 5999, 4111, 5816, 6011], size)}


def build_lake(ws: Workspace, size: int) -> dict[str, np.ndarray]:
    """Curated, scored and quarantine zones of ``size`` rows, plus a worked alert queue."""
    rng = np.random.default_rng(11)
    cols = _columns(size, rng)
    timestamps = pa.array(START.timestamp() * 1e6 + cols["offset_us"], pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))
    dt = pc.strftime(timestamps, "%Y-%m-%d")
    ids = pa.array([f"tx{i:09d}" for i in range(size)])
    terminals = pa.array([f"T{t:06d}" for t in cols["terminal"]])
    customers = pa.array([f"C{c:07d}" for c in rng.integers(0, max(size // 20, 10), size)])
    amount = pa.array(np.round(rng.lognormal(3.5, 1.0, size), 2))
    curated = pa.table({
        "transaction_id": ids, "timestamp": timestamps, "customer_id": customers,
        "terminal_id": terminals, "amount": amount,
        "merchant_category": pa.array(cols["mcc"].astype(str)),
        "channel": pa.array(np.array(CHANNELS)[cols["channel"]]),
        "is_fraud": pa.array(cols["is_fraud"]), "dt": dt,
    })
    curated = _conform(curated, CURATED_SCHEMA)
    scored = _conform(pa.table({
        "transaction_id": ids, "customer_id": customers, "terminal_id": terminals,
        "timestamp": timestamps, "amount": amount, "score": pa.array(cols["score"]),
        "decision": pa.array(np.where(cols["score"] >= 0.5, "alert", "clear")),
        "model_version": pa.array(np.full(size, 1, np.int64)), "scored_at": timestamps,
        "dt": dt}), SCORED_SCHEMA.append(pa.field("dt", pa.string())))
    quarantine = _conform(pa.table({
        "transaction_id": ids[: size // 1000 + 1],
        "reason": pa.array(rng.choice(["bad_amount", "bad_timestamp", "missing_customer_id"],
                                      size // 1000 + 1)),
        "source_file": pa.array(["drop.csv"] * (size // 1000 + 1)),
        "source_line": pa.array(np.arange(size // 1000 + 1)),
        "ingestion_id": pa.array(["ing-bench"] * (size // 1000 + 1)),
        "dt": dt[: size // 1000 + 1]}), QUARANTINE_SCHEMA)
    for zone, table in ((ws.curated, curated), (ws.scored, scored), (ws.quarantine, quarantine)):
        for day in pc.unique(table.column("dt")).to_pylist():
            target = zone / f"dt={day}" / "part-00000.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pc.equal(table.column("dt"), day)), target)
    refresh_catalog(ws)
    _alert_queue(ws, scored)
    return cols


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Every schema column (missing optional ones as nulls), in schema order and types."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names
              else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _alert_queue(ws: Workspace, scored: pa.Table) -> None:
    alerts = scored.filter(pc.equal(scored.column("decision"), "alert")).slice(0, ALERTS)
    queue = CaseQueue(ws.cases_db)
    for row in alerts.to_pylist():
        queue.add_alert({
            "transaction_id": row["transaction_id"], "card_id": row["customer_id"],
            "terminal_id": row["terminal_id"], "amount": row["amount"],
            "tx_timestamp": row["timestamp"].isoformat(), "score": row["score"],
            "severity": "high" if row["score"] >= 0.9 else "medium", "model_version": "1"})
    for index, case in enumerate(queue.list_alerts(limit=ALERTS // 2)):
        disposition = "confirmed_fraud" if index % 3 else "false_positive"
        queue.close(case["case_id"], disposition, actor="bench")
    export_queue(ws)


def write_evaluation(path: Path, cols: dict[str, np.ndarray]) -> Path:
    """A small evaluation.json (PR curve, CP@k) so the dashboard draws every panel."""
    precision, recall, thresholds = precision_recall_curve(cols["is_fraud"], cols["score"])
    index = np.linspace(0, len(thresholds) - 1, 200).astype(int)
    days = [(START + timedelta(days=d)).date().isoformat() for d in range(DAYS - 7, DAYS)]
    metric = {"value": 0.5, "threshold": DEFAULT_ALERT_THRESHOLD}
    path.write_text(json.dumps({
        "binary_classification_metrics": {
            "average_precision": {"value": 0.6}, "roc_auc": {"value": 0.95},
            "card_precision_at_k": {"value": 0.2, "k": 100, "best_possible": 0.3},
            "precision_at_threshold": metric, "recall_at_threshold": metric},
        "alert_threshold": DEFAULT_ALERT_THRESHOLD,
        "card_precision_at_k_per_day": [
            {"day": d, "precision": 0.2, "best_possible": 0.3} for d in days],
        "pr_curve": {"precision": precision[index].tolist(), "recall": recall[index].tolist(),
                     "thresholds": thresholds[index].tolist()},
    }))
    return path


def run(size: int, workdir: Path) -> list[Result]:
    ws = Workspace.open(workdir / "ws")
    cols = build_lake(ws, size)
    results = []
    for name in sorted(load_library()):
        seconds = median_seconds(lambda n=name: run_named_query(ws, n), repeat=3)
        results.append(Result(AREA, f"query {name}", seconds, "s",
                              f"<= {QUERY_TARGET_S:.0f} s", seconds <= QUERY_TARGET_S))
    evaluation = write_evaluation(workdir / "evaluation.json", cols)
    out = workdir / "dashboard.html"
    seconds = median_seconds(lambda: render_dashboard(ws, out, evaluation), repeat=3)
    results.append(Result(AREA, "dashboard render", seconds, "s",
                          f"<= {DASHBOARD_TARGET_S:.0f} s", seconds <= DASHBOARD_TARGET_S))
    results.append(Result(AREA, "dashboard size", out.stat().st_size / 1e6, "MB"))
    return results
