"""Online features replayed one transaction at a time equal the DuckDB batch features.

Several days of synthetic transactions with terminal fraud, label delay (the
default delay and explicit late/flipped labels), compared feature by feature
within 1e-9; the deployed model scores both the same. Also in arrival order:
customers and terminals interleaved up to 20 minutes out of time order (each
entity's own transactions in order), with labels arriving mid-stream and state
committed and reloaded along the way.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fixtures.arrival import arrival_order, overtaken

from pipelines.core.params import DEFAULT_ALLOWED_LATENESS_SECONDS
from pipelines.data.datagen import GeneratorConfig, generate_transactions
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.data.features.duckdb_engine import compute_features
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.deploy.sample_model import create_request, train_model_files, upload_model
from pipelines.serving.online.engine import STREAM_ENTITY, OnlineFeatureEngine, OutOfOrder
from pipelines.serving.online.store import LocalStateStore, StateError
from pipelines.serving.scoring.batch import load_model, score_table
from pipelines.serving.stream.core import model_matrix
from pipelines.serving.stream.models import InProcessModel

DELAY_DAYS = 7
TOLERANCE = 1e-9
MINUTE_US = 60_000_000


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


def test_interleaved_out_of_order_input_gives_the_batch_features(transactions, tmp_path):
    """Customers and terminals interleaved up to 20 minutes out of time order, late labels
    delivered at label_known_at on the arrival clock, the state committed and reloaded
    every 500 transactions: every transaction is scored, with the batch features."""
    labels = _late_labels(transactions, every=5)
    batch = compute_features(transactions, DELAY_DAYS, labels)
    rows = _rows(transactions)
    arriving = arrival_order(rows, 20 * MINUTE_US, seed=4)
    assert overtaken([row for _, row in arriving]) > len(rows) // 10, (
        "the input must be out of time order, or this proves nothing")

    feedback = sorted(_label_tuples(labels), key=lambda label: label[2])
    store = LocalStateStore(tmp_path / "online")
    engine, _ = store.load(DELAY_DAYS)
    features: dict[str, list] = {}
    next_label = 0
    for position, (arrival, row) in enumerate(arriving):
        while next_label < len(feedback) and feedback[next_label][2] <= arrival:
            engine.apply_labels([feedback[next_label]])
            next_label += 1
        features[row["transaction_id"]] = engine.process(row)
        if position % 500 == 499:  # a restart must not change a thing
            store.commit(engine, {"position": position})
            engine, _ = store.load(DELAY_DAYS)
    assert len(features) == len(rows)
    _assert_equal_features(batch, rows, [features[r["transaction_id"]] for r in rows])


def test_a_transaction_older_than_its_customers_newest_is_refused_unchanged(transactions):
    rows = _rows(transactions)
    first = rows[0]
    later = {**next(r for r in rows[1:] if r["customer_id"] == first["customer_id"]),
             "ts_us": first["ts_us"] + 1_500_000}  # well within the allowed lateness
    engine = OnlineFeatureEngine(DELAY_DAYS)
    engine.apply_labels([(first["transaction_id"], 1, later["ts_us"])])  # waits for first
    engine.process(later)
    with pytest.raises(OutOfOrder) as refused:
        engine.process(first)
    late_by = later["ts_us"] - first["ts_us"]
    assert (refused.value.entity, refused.value.key) == ("customer_id", (first["customer_id"],))
    assert refused.value.late_by_us == late_by
    assert f"customer_id={first['customer_id']} late by " in refused.value.detail
    assert first["transaction_id"] in str(refused.value)
    # Nothing changed: the label still waits, the state is the in-order one's.
    assert first["transaction_id"] in engine.meta.pending_labels
    reference = OnlineFeatureEngine(DELAY_DAYS)
    reference.process(later)
    following = next(r for r in rows if r["ts_us"] > later["ts_us"]
                     and r["customer_id"] == later["customer_id"])
    assert engine.process(following) == reference.process(following)


def test_another_customers_older_transaction_is_scored_within_the_allowed_lateness(transactions):
    """One second older, another customer and terminal: scored (was refused), exactly."""
    rows = _rows(transactions)
    newer = rows[100]
    older = {**next(r for r in rows if r["customer_id"] != newer["customer_id"]
                    and r["terminal_id"] != newer["terminal_id"] and r["ts_us"] < newer["ts_us"]),
             "ts_us": newer["ts_us"] - 1_000_000}
    in_order = OnlineFeatureEngine(DELAY_DAYS)
    expected = {r["transaction_id"]: in_order.process(r) for r in (older, newer)}
    engine = OnlineFeatureEngine(DELAY_DAYS)
    assert engine.process(newer) == expected[newer["transaction_id"]]
    assert engine.process(older) == expected[older["transaction_id"]]


def test_a_label_known_after_the_terminals_newest_waits_for_the_terminal(transactions):
    """A label applied once the stream's clock passed label_known_at, but not yet the
    terminal's: the terminal's next (older than the stream) transaction must not count it."""
    template = _rows(transactions)[0]
    base, day = template["ts_us"], 86_400_000_000

    def row(tx: str, customer: str, terminal: str, ts: int) -> dict:
        return {**template, "transaction_id": tx, "customer_id": customer,
                "terminal_id": terminal, "ts_us": ts, "is_fraud": 0}

    x = row("x", "c1", "T", base)
    y = row("y", "c2", "T", base + 8 * day)  # x is inside T's label-delayed 7d frame
    label = ("x", 1, base + 8 * day + 20 * MINUTE_US)
    v = row("v", "c3", "T", label[2] - 10 * MINUTE_US)  # before the label is known
    w = row("w", "c4", "T", label[2] + 1)  # after
    z = row("z", "c5", "U", label[2] + 10 * MINUTE_US)  # the stream's newest

    reference = OnlineFeatureEngine(DELAY_DAYS)  # time order, the label when it is known
    reference.process(x)
    reference.process(y)
    expected = {"v": reference.process(v)}
    reference.apply_labels([label])
    expected["w"] = reference.process(w)

    engine = OnlineFeatureEngine(DELAY_DAYS)  # arrival: z before v and w, label in between
    for r in (x, y, z):
        engine.process(r)
    engine.apply_labels([label])
    got = {"v": engine.process(v), "w": engine.process(w)}
    assert got == expected
    frauds = FEATURE_COLUMNS.index("term_fraud_count_7d")
    assert (got["v"][frauds], got["w"][frauds]) == (0, 1)


def test_beyond_the_allowed_lateness_is_refused_for_any_entity(transactions, tmp_path):
    rows = _rows(transactions)
    newest = rows[-1]["ts_us"]
    fresh = {**rows[0], "transaction_id": "fresh", "customer_id": "nobody", "terminal_id": "none"}
    engine = OnlineFeatureEngine(DELAY_DAYS, allowed_lateness_seconds=600)
    engine.process(rows[-1])
    engine.process({**fresh, "transaction_id": "at-floor", "ts_us": newest - 600_000_000})
    with pytest.raises(OutOfOrder) as refused:
        engine.process({**fresh, "ts_us": newest - 600_000_001})
    assert refused.value.entity == STREAM_ENTITY
    assert refused.value.late_by_us == 600_000_001
    assert refused.value.detail.startswith(
        "stream late by 600.000001 s, more than the allowed lateness of 600 s")
    assert DEFAULT_ALLOWED_LATENESS_SECONDS >= 5 * 60  # minutes of cross-key disorder by default

    # Pruning keeps what the floor can read; a larger lateness later never reaches under it.
    store = LocalStateStore(tmp_path / "online")
    store.commit(engine, {})
    assert engine.meta.floor == newest - 600_000_000
    assert engine.oldest_useful_us() == engine.meta.floor - engine.horizon_micros - 1
    wider, _ = store.load(DELAY_DAYS, allowed_lateness_seconds=7200)
    assert wider.floor_us() == newest - 600_000_000
    with pytest.raises(OutOfOrder):
        wider.process({**fresh, "ts_us": newest - 600_000_001})
    narrower, _ = store.load(DELAY_DAYS, allowed_lateness_seconds=60)
    assert narrower.floor_us() == newest - 60_000_000


def test_state_saved_before_the_floor_was_stored_keeps_its_watermark_as_floor(
    transactions, tmp_path
):
    """Older state was pruned as if nothing before its watermark could come: so it stays."""
    import sqlite3

    rows = _rows(transactions)
    store = LocalStateStore(tmp_path / "online")
    engine, _ = store.load(DELAY_DAYS)
    for row in rows[:50]:
        engine.process(row)
    store.commit(engine, {})
    with sqlite3.connect(store.path) as con:
        con.execute("DELETE FROM meta WHERE name = 'floor'")
    reloaded, _ = store.load(DELAY_DAYS)
    assert reloaded.floor_us() == reloaded.meta.watermark == rows[49]["ts_us"]


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
