"""The Spark engine (local[2], file:// only) equals the DuckDB engine on every value.

Slow: one session-scoped SparkSession (~10 s to start) serves every test.
"""

from __future__ import annotations

import json
import math
import random
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_features import (
    DAY,
    HOUR,
    T0,
    assert_matches_reference,
    by_id,
    crafted_transactions,
    label_delay_rows,
    labels_table,
    reference_features,
    write_curated,
)

from bench.features import generate_curated
from pipelines.core.workspace import Workspace
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_SET_VERSION
from pipelines.data.features.build import build_feature_table

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="session")
def spark():
    from pipelines.data.features.spark_engine import local_session

    session = local_session("local[2]", shuffle_partitions=4)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def read_table(directory: Path) -> pa.Table:
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    return table.sort_by("transaction_id")


def assert_same_tables(spark_table: pa.Table, duckdb_table: pa.Table) -> None:
    """Identical ids, labels and partitions; features equal within 1e-9 (relative)."""
    assert spark_table.num_rows == duckdb_table.num_rows
    for column in (
        "transaction_id",
        "timestamp",
        "customer_id",
        "terminal_id",
        "amount",
        "is_fraud",
    ):
        assert spark_table[column].to_pylist() == duckdb_table[column].to_pylist(), column
    assert [str(v) for v in spark_table["dt"].to_pylist()] == [
        str(v) for v in duckdb_table["dt"].to_pylist()
    ]
    for column in FEATURE_COLUMNS:
        left, right = spark_table[column].to_pylist(), duckdb_table[column].to_pylist()
        bad = [
            (i, a, b)
            for i, (a, b) in enumerate(zip(left, right, strict=True))
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        ]
        assert not bad, f"{column}: {len(bad)} differences, first {bad[:3]}"


def build_both(ws: Workspace, **kwargs) -> tuple[pa.Table, pa.Table]:
    """Build with DuckDB, keep a copy, build with Spark; return (spark, duckdb)."""
    build_feature_table(ws, engine="duckdb", **kwargs)
    duckdb_table = read_table(ws.features)
    summary = build_feature_table(ws, engine="spark", **kwargs)
    assert summary.engine == "spark" and summary.rows == duckdb_table.num_rows
    return read_table(ws.features), duckdb_table


def test_spark_equals_duckdb_and_the_reference_on_the_crafted_dataset(spark, workspace):
    rows = crafted_transactions()
    write_curated(workspace, rows)
    spark_table, duckdb_table = build_both(workspace)
    assert_same_tables(spark_table, duckdb_table)
    assert_matches_reference(spark_table, reference_features(rows))
    manifest = json.loads((workspace.features / "_feature_set.json").read_text())
    assert manifest["version"] == FEATURE_SET_VERSION


def test_spark_equals_duckdb_with_late_labels_and_another_delay(spark, workspace):
    rows = crafted_transactions(seed=4)
    write_curated(workspace, rows)
    rng = random.Random(9)
    entries = [
        (r.transaction_id, rng.choice([0, 1]), r.timestamp + timedelta(hours=rng.randrange(600)))
        for r in rng.sample(rows, 50)
    ]
    workspace.labels.mkdir(parents=True)
    pq.write_table(labels_table(entries), workspace.labels / "feedback.parquet")
    spark_table, duckdb_table = build_both(workspace, label_delay_days=3)
    assert_same_tables(spark_table, duckdb_table)
    labels = {tid: (label, known) for tid, label, known in entries}
    assert_matches_reference(spark_table, reference_features(rows, 3, labels))


def test_spark_equals_duckdb_on_generated_volume(spark, workspace):
    generate_curated(workspace.curated, 20_000, days=45, seed=3)
    spark_table, duckdb_table = build_both(workspace)
    assert_same_tables(spark_table, duckdb_table)


def test_emr_entry_runs_locally_on_file_uris(spark, tmp_path):
    from companions.emr import feature_job

    ws = Workspace.open(tmp_path / "ws")
    write_curated(ws, label_delay_rows())
    labels = tmp_path / "labels"
    labels.mkdir()
    pq.write_table(labels_table([("td-fraud", 1, T0 + 11 * DAY)]), labels / "l.parquet")
    output = tmp_path / "features"
    code = feature_job.main(
        [
            "--input",
            ws.curated.as_uri(),
            "--output",
            output.as_uri(),
            "--labels",
            labels.as_uri(),
            "--label-delay-days",
            "7",
            "--master",
            "local[2]",
        ]
    )
    assert code == 0
    out = by_id(read_table(output))
    assert out["td-8d"]["term_fraud_count_30d"] == 0.0  # label not known yet
    assert out["td-11d"]["term_fraud_count_30d"] == 1.0
    assert out["td-8d"]["seconds_since_prev_tx"] == (2 * DAY - HOUR).total_seconds()
    manifest = json.loads((output / "_feature_set.json").read_text())
    assert manifest["feature_columns"] == list(FEATURE_COLUMNS)
