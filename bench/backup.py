"""Backup vault figures: full backup, verify and an incremental backup after one new day.

The lake is generated here: ``size`` transactions in the curated schema,
day-partitioned (``dt=YYYY-MM-DD``) over 30 days like the ingest output.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import Result
from pipelines.compliance import vault
from pipelines.core.schema import CURATED_SCHEMA
from pipelines.core.workspace import Workspace

AREA = "backup"
DAYS = 30
REPEAT = 3
FIRST_DAY = date(2026, 1, 1)


def _day_table(day: date, rows: int, seed: int) -> pa.Table:
    """``rows`` synthetic curated transactions of one day (tokenised, no card numbers)."""
    rng = np.random.default_rng(seed)
    start = np.datetime64(day.isoformat(), "us")
    offsets = np.sort(rng.integers(0, 86_400_000_000, rows)).astype("timedelta64[us]")
    customers = rng.integers(0, max(rows // 20, 1), rows)
    columns = {
        "transaction_id": pa.array([f"tx-{seed:05d}-{i:08d}" for i in range(rows)]),
        "timestamp": pa.array(start + offsets, type=pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array([f"c{c:07d}" for c in customers]),
        "terminal_id": pa.array([f"t{t:06d}" for t in rng.integers(0, 10_000, rows)]),
        "amount": pa.array(np.round(rng.lognormal(3.5, 1.0, rows), 2)),
        "card_token": pa.array([f"tok{c:013x}" for c in customers]),
        "card_masked": pa.array(["411111******1111"] * rows),
        "currency": pa.array(["USD"] * rows),
        "merchant_category": pa.array(rng.choice(["5411", "5812", "5999", "6011"], rows)),
        "channel": pa.array(rng.choice(["card_present", "ecommerce", "atm"], rows)),
        "country": pa.array(rng.choice(["US", "GB", "DE"], rows)),
        "is_cash": pa.array(rng.random(rows) < 0.05),
        "is_fraud": pa.array((rng.random(rows) < 0.01).astype(np.int8)),
        "fraud_scenario": pa.nulls(rows, pa.string()),
        "source_file": pa.array([f"transactions_{day}.csv"] * rows),
        "ingestion_id": pa.array([f"ing-{seed}"] * rows),
        "dt": pa.array([day.isoformat()] * rows),
    }
    return pa.table(columns).cast(CURATED_SCHEMA)


def _write_day(ws: Workspace, day: date, rows: int, seed: int) -> int:
    """Write one partition as the ingest job does (staging dir, then rename); return bytes."""
    staging = ws.curated / f".dt={day}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(_day_table(day, rows, seed), staging / "part-0.parquet")
    size = (staging / "part-0.parquet").stat().st_size
    os.replace(staging, ws.curated / f"dt={day}")
    return size


def _fresh_vault(ws: Workspace) -> None:
    shutil.rmtree(ws.vault, ignore_errors=True)


def run(size: int, workdir: Path) -> list[Result]:
    """Full backup, verify and incremental backup of a ``size``-transaction lake (medians)."""
    ws = Workspace.open(workdir / "ws")
    rows_per_day = max(size // DAYS, 1)
    lake_bytes = sum(
        _write_day(ws, FIRST_DAY + timedelta(days=d), rows_per_day, d) for d in range(DAYS)
    )

    full_times, full_written = [], 0
    for _ in range(REPEAT):
        _fresh_vault(ws)
        started = time.perf_counter()
        full_written = vault.create_snapshot(ws, actor="bench").bytes_written
        full_times.append(time.perf_counter() - started)

    verify_times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        report = vault.verify_snapshots(ws)
        verify_times.append(time.perf_counter() - started)
        assert report.ok, report.problems

    incremental_times, incremental_written, new_day_bytes = [], [], []
    for extra in range(REPEAT):
        new_day_bytes.append(
            _write_day(ws, FIRST_DAY + timedelta(days=DAYS + extra), rows_per_day, DAYS + extra)
        )
        started = time.perf_counter()
        result = vault.create_snapshot(ws, actor="bench")
        incremental_times.append(time.perf_counter() - started)
        incremental_written.append(result.bytes_written)

    full_s = statistics.median(full_times)
    inc_written = statistics.median(incremental_written)
    new_day = statistics.median(new_day_bytes)
    # The increment is the new partition plus the grown audit trail (a few KiB).
    increment_ok = inc_written <= new_day + 256 * 1024
    mib = 1024 * 1024
    return [
        Result(AREA, "lake size (30 days, Parquet)", lake_bytes / mib, "MiB"),
        Result(AREA, "full backup", full_s, "s"),
        Result(AREA, "full backup throughput", full_written / mib / full_s, "MiB/s"),
        Result(AREA, "full backup bytes written", full_written / mib, "MiB"),
        Result(AREA, "verify (re-hash all objects)", statistics.median(verify_times), "s"),
        Result(
            AREA, "incremental backup after 1 new day", statistics.median(incremental_times), "s"
        ),
        Result(
            AREA,
            "incremental bytes written",
            inc_written / mib,
            "MiB",
            target=f"~ new day ({new_day / mib:.2f} MiB) + audit log",
            ok=increment_ok,
        ),
    ]
