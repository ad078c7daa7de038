"""Online features replayed one transaction at a time equal the DuckDB batch features.

Several days of synthetic transactions with terminal fraud, label delay (the
default delay and explicit late/flipped labels), compared feature by feature
within 1e-9; the deployed model scores both the same.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.data.datagen import GeneratorConfig, generate_transactions
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.data.features.duckdb_engine import compute_features
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.deploy.sample_model import create_request, train_model_files, upload_model
from pipelines.serving.online.engine import OnlineFeatureEngine, OutOfOrder
from pipelines.serving.online.store import LocalStateStore, StateError
from pipelines.serving.scoring.batch import load_model, score_table
from pipelines.serving.stream.core import model_matrix
from pipelines.serving.stream.models import InProcessModel

DELAY_DAYS = 7
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def transactions() -> pa.Table:
    """16 days, heavy terminal fraud so the label-delayed terminal features are exercised."""
    table = generate_transactions(
        GeneratorConfig(transactions=3000, days=16, fraud_rate_scale=12, seed=3)
    ).drop_columns(["card_number"])
    index = table.schema.get_field_index("timestamp")
    return table.set_column(index, "timestamp", pc.cast(table.column("timestamp"),
                                                        pa.timestamp("us", tz="UTC")))


def _rows(table: pa.Table) -> list[dict]:
    """Rows in the batch engine's order (timestamp, transaction_id), with ``ts_us``."""
    rows = table.to_pylist()
    for row in rows:
        row["ts_us"] = int(row["timestamp"].timestamp()) * 1_000_000 + row["timestamp"].microsecond
    return sorted(rows, key=lambda r: (r["ts_us"], r["transaction_id"]))


def _late_labels(table: pa.Table, every: int = 9) -> pa.Table:
    """Explicit labels: late (known after the default delay), early, and flipped ones."""
    labels = []
    for i, row in enumerate(table.to_pylist()):
        if i % every:
            continue
        known_after = timedelta(days=(1, 3, 9, 12, 20)[i % 5], hours=i % 13)
        flipped = i % 4 == 0
        labels.append(
            {
                "transaction_id": row["transaction_id"],
                "is_fraud": int(row["is_fraud"] != flipped),
                "label_known_at": row["timestamp"] + known_after,
            }
        )
    return pa.Table.from_pylist(
        labels,
        schema=pa.schema([("transaction_id", pa.string()), ("is_fraud", pa.int8()),
                          ("label_known_at", pa.timestamp("us", tz="UTC"))]),
    )


def _label_tuples(labels: pa.Table):
    known = pc.cast(labels.column("label_known_at"), pa.int64()).to_pylist()
    return list(zip(labels.column("transaction_id").to_pylist(),
                    labels.column("is_fraud").to_pylist(), known, strict=True))


def _assert_equal_features(batch: pa.Table, rows: list[dict], online: list[list]) -> None:
    assert batch.column("transaction_id").to_pylist() == [r["transaction_id"] for r in rows]
    mismatches = []
    for j, name in enumerate(FEATURE_COLUMNS):
        for i, expected in enumerate(batch.column(name).to_pylist()):
            got = online[i][j]
            same = (expected is None and got is None) or (
                expected is not None and got is not None
                and math.isclose(expected, got, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
            )
            if not same:
                mismatches.append((name, rows[i]["transaction_id"], expected, got))
    assert not mismatches, f"{len(mismatches)} differences, e.g. {mismatches[:5]}"


def test_online_features_equal_batch_features_with_the_default_label_delay(transactions):
    batch = compute_features(transactions, DELAY_DAYS)
    rows = _rows(transactions)
    engine = OnlineFeatureEngine(DELAY_DAYS)
    online = [engine.process(row) for row in rows]
    _assert_equal_features(batch, rows, online)
    # The comparison covers the label-delayed terminal risk, not just zeros.
    assert pc.max(batch.column("term_fraud_count_30d")).as_py() >= 2
    assert pc.max(batch.column("new_channel_for_customer")).as_py() == 1


def test_online_features_equal_batch_features_with_explicit_late_labels(transactions):
    labels = _late_labels(transactions)
    batch = compute_features(transactions, DELAY_DAYS, labels)
    without = compute_features(transactions, DELAY_DAYS)
    changed = pc.sum(pc.not_equal(batch.column("term_fraud_count_30d"),
                                  without.column("term_fraud_count_30d"))).as_py()
    assert changed > 0, "the labels must change some features, or this test proves nothing"
    engine = OnlineFeatureEngine(DELAY_DAYS)
    engine.apply_labels(_label_tuples(labels))
    rows = _rows(transactions)
    _assert_equal_features(batch, rows, [engine.process(row) for row in rows])


def test_labels_arriving_mid_stream_give_the_batch_features(transactions):
    """Feedback delivered at label_known_at, on transactions whose label was unknown."""
    labels = _late_labels(transactions, every=5)
    labelled = set(labels.column("transaction_id").to_pylist())
    unknown = pa.array([None if tx in labelled else v for tx, v in zip(
        transactions.column("transaction_id").to_pylist(),
        transactions.column("is_fraud").to_pylist(), strict=True)], pa.int8())
    table = transactions.set_column(transactions.schema.get_field_index("is_fraud"),
                                    "is_fraud", unknown)
    batch = compute_features(table, DELAY_DAYS, labels)
    feedback = sorted(_label_tuples(labels), key=lambda label: label[2])
    engine = OnlineFeatureEngine(DELAY_DAYS)
    rows, online, next_label = _rows(table), [], 0
    for row in rows:
        while next_label < len(feedback) and feedback[next_label][2] <= row["ts_us"]:
            engine.apply_labels([feedback[next_label]])
            next_label += 1
        online.append(engine.process(row))
    _assert_equal_features(batch, rows, online)


def test_a_restart_from_the_committed_snapshot_resumes_exactly(transactions, tmp_path):
    rows = _rows(transactions)
    reference = OnlineFeatureEngine(DELAY_DAYS)
    expected = [reference.process(row) for row in rows]
    store = LocalStateStore(tmp_path / "online")
    engine, checkpoint = store.load(DELAY_DAYS)
    assert checkpoint == {}
    half = len(rows) // 2
    first = [engine.process(row) for row in rows[:half]]
    store.commit(engine, {"seq": 1})
    for row in rows[half : half + 50]:  # processed but never committed: lost in the crash
        engine.process(row)
    resumed, checkpoint = store.load(DELAY_DAYS)
    assert checkpoint == {"seq": 1}
    assert first + [resumed.process(row) for row in rows[half:]] == expected


def test_the_snapshot_refuses_another_label_delay(tmp_path):
    store = LocalStateStore(tmp_path / "online")
    store.commit(OnlineFeatureEngine(DELAY_DAYS), {})
    with pytest.raises(StateError, match="7-day label delay"):
        store.load(3)


def test_an_older_transaction_is_refused_not_mixed_in(transactions):
    rows = _rows(transactions)
    engine = OnlineFeatureEngine(DELAY_DAYS)
    engine.process(rows[10])
    with pytest.raises(OutOfOrder, match=rows[0]["transaction_id"]):
        engine.process(rows[0])


def test_stream_scores_equal_batch_scores(transactions, workspace, tmp_path):
    model_dir = train_model_files(tmp_path / "model", features=FEATURE_COLUMNS)
    uri = upload_model(workspace, model_dir, "models/run-1/model.tar.gz")
    registry = LocalModelRegistry(workspace.registry_db)
    arn = registry.create_model_package(create_request("fraud-detection", uri), "alice")
    registry.update_model_package(arn["ModelPackageArn"], APPROVED, "bob", "ok")
    loaded = load_model(workspace, version="1", threshold=0.5)

    batch = compute_features(transactions, DELAY_DAYS)
    batch_scores = score_table(loaded, batch, batch.column("timestamp")[0].as_py())
    engine = OnlineFeatureEngine(DELAY_DAYS)
    online = [engine.process(row) for row in _rows(transactions)]
    model = InProcessModel(loaded)
    stream_scores = model.score(model_matrix(online, engine, model.feature_columns))

    expected = batch_scores.column("score").to_numpy()
    np.testing.assert_allclose(stream_scores, expected, rtol=0, atol=1e-12)
    assert len(set(np.round(expected, 6))) > 10  # a model that scores, not a constant


# The compiler must give DuckDB's answer for SQL the definitions may use next, NULLs included.
EXPRESSIONS = (
    "x / y",
    "x % y",
    "CAST(x AS BIGINT) % 7",
    "round(x * 100)",
    "round(x, 1)",
    "floor(x / 3)",
    "coalesce(x, y, 0)",
    "greatest(x, y)",
    "CASE WHEN x > y THEN x WHEN x IS NULL THEN -1 ELSE y END",
    "CASE WHEN label = 'a' THEN 1 ELSE 0 END",
    "CASE WHEN NOT (x < 2) THEN 1 ELSE 0 END",
    "ln(1 + abs(x))",
    "sqrt(greatest(x, 0))",
    "-x + y * 2",
    "sin(2 * pi() * x / 24)",
)
ROWS = [
    (2.5, 4.0, "a"), (-7.0, 3.0, "b"), (0.125, 0.0, None), (None, 2.0, "a"),
    (1e6 + 0.5, None, "c"), (-2.5, -0.0, "a"), (0.0, 0.0, None),
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_compiled_expressions_match_duckdb(expression):
    import duckdb

    from pipelines.serving.online.compiler import ExpressionCompiler, build_function

    compiled = ExpressionCompiler({"x": "x", "y": "y", "label": "label"},
                                  {"x", "y", "label"}).compile(expression)
    function = build_function("probe", ["x", "y", "label"], [f"return {compiled.source}"])
    con = duckdb.connect()
    for x, y, label in ROWS:
        expected = con.execute(
            f"SELECT CAST({expression} AS DOUBLE) FROM (SELECT ?::DOUBLE AS x, ?::DOUBLE AS y, "
            "?::VARCHAR AS label)", [x, y, label]
        ).fetchall()[0][0]
        got = function(x, y, label)
        got = None if got is None else float(got)
        if expected is None or got is None:
            assert got is None and expected is None, (expression, x, y, label, got, expected)
        elif math.isnan(expected):
            assert math.isnan(got), (expression, x, y, label, got)
        else:
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (expression, x, y, label)
