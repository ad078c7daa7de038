"""Batch scoring throughput: one day of ``size`` feature rows -> scored partition.

Target: >= 200,000 transactions/s end to end (read the feature Parquet, score
with ``inference.py``'s ``predict_fn``, write the scored Parquet atomically).
The model has the size training produces (34 features, 400 rounds, depth 5)
and is registered, approved and resolved exactly as ``fraudops score`` does.
"""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import Result, median_seconds
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.deploy.sample_model import (
    create_request,
    synthetic_features,
    train_model_files,
    upload_model,
)
from pipelines.serving.scoring import load_model, score_day
from pipelines.serving.scoring.batch import score_table

AREA = "scoring"
DAY = "2026-01-05"
TARGET_TX_PER_SECOND = 200_000.0
START_US = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z


def process_cpu_seconds() -> float:
    """User + system CPU of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_feature_day(ws: Workspace, size: int) -> None:
    """``size`` rows shaped like the feature table, in one dt= partition."""
    frame = synthetic_features(size, FEATURE_COLUMNS, seed=3).drop(columns="is_fraud")
    rng = np.random.default_rng(4)
    ids = {
        "transaction_id": pa.array([f"tx-{i:09d}" for i in range(size)]),
        "timestamp": pa.array(
            np.sort(START_US + rng.integers(0, 86_400_000_000, size)),
            pa.timestamp("us", tz="UTC"),
        ),
        "customer_id": pa.array([f"c{i}" for i in rng.integers(0, size // 50 + 1, size)]),
        "terminal_id": pa.array([f"t{i}" for i in rng.integers(0, size // 100 + 1, size)]),
        "amount": pa.array(np.round(rng.lognormal(3.5, 1.0, size), 2)),
    }
    table = pa.table({**ids, **{name: frame[name].to_numpy() for name in FEATURE_COLUMNS}})
    target = ws.features / f"dt={DAY}"
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / "part-0.parquet")


def run(size: int, workdir: Path) -> list[Result]:
    ws = Workspace.open(workdir / "ws")
    model_dir = train_model_files(
        workdir / "model", features=FEATURE_COLUMNS, rows=20_000, num_round=400, max_depth=5
    )
    registry = LocalModelRegistry(ws.registry_db)
    uri = upload_model(ws, model_dir, "models/bench/model.tar.gz")
    arn = registry.create_model_package(create_request("fraud-detection", uri), "bench")
    registry.update_model_package(arn["ModelPackageArn"], APPROVED, "reviewer", "bench")
    write_feature_day(ws, size)
    model = load_model(ws, version="1")

    seconds = median_seconds(lambda: score_day(ws, DAY, model), repeat=3)
    # CPU time is far less sensitive than wall time to other jobs on a shared host.
    cpu_before = process_cpu_seconds()
    score_day(ws, DAY, model)
    cpu_per_million = (process_cpu_seconds() - cpu_before) / size * 1_000_000
    table = pq.read_table(ws.features / f"dt={DAY}")
    started = time.perf_counter()
    score_table(model, table, datetime.now(UTC))
    predict_seconds = time.perf_counter() - started
    rate = size / seconds
    return [
        Result(AREA, "end-to-end time", seconds, "s"),
        Result(
            AREA,
            "end-to-end throughput",
            rate,
            "tx/s",
            f">= {TARGET_TX_PER_SECOND:,.0f}",
            rate >= TARGET_TX_PER_SECOND,
        ),
        Result(AREA, "scoring only (in memory)", size / predict_seconds, "tx/s"),
        Result(AREA, "CPU time per 1M tx (all threads)", cpu_per_million, "cpu-s"),
    ]
