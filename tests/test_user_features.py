"""The user's own columns as features, and feature groups decided by the data.

Curated data here is written directly, shaped as the ingest contract says
(docs/CONTRACTS.md "Curated transactions"): the canonical columns, plus every
column the column map declared a feature (numeric as float64, categorical as
text). The feature table must carry those columns through, list them in its
manifest, and leave out (NULL, not listed) the built-in features whose inputs
the data does not have.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.core.schema import CURATED_SCHEMA
from pipelines.data.features.build import build_feature_table
from pipelines.data.features.definitions import (
    FEATURE_COLUMNS,
    FEATURE_NEEDS,
    FeatureLayout,
    FeatureLayoutError,
    layout_of,
)

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def curated_table(n: int, seed: int = 5, ids: bool = True, **extra: pa.Array) -> pa.Table:
    """``n`` curated rows over ~10 days; optional columns null; ``extra`` user columns."""
    rng = np.random.default_rng(seed)
    times = [T0 + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 10 * 86_400, n))]
    columns = {
        "transaction_id": pa.array([f"x{i:05d}" for i in range(n)]),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array([f"c{v}" if ids else None for v in rng.integers(0, 30, n)],
                                pa.string()),
        "terminal_id": pa.array([f"t{v}" if ids else None for v in rng.integers(0, 20, n)],
                                pa.string()),
        "amount": pa.array(np.round(rng.lognormal(3, 1, n), 2)),
        "is_fraud": pa.array((rng.random(n) < 0.05).astype(np.int8)),
        "dt": pa.array([t.strftime("%Y-%m-%d") for t in times]),
        "source_file": pa.array(["user.csv"] * n),
    }
    # Ids are optional in curated data (ingest stores null when a file has none).
    schema = pa.schema([f.with_nullable(True) if f.name in ("customer_id", "terminal_id") else f
                        for f in CURATED_SCHEMA])
    table = pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema},
                     schema=schema)
    for name, values in extra.items():
        table = table.append_column(name, values)
    return table


def write_curated(ws, table: pa.Table) -> None:
    for day in sorted(set(table["dt"].to_pylist())):
        directory = ws.curated / f"dt={day}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pc.equal(table["dt"], day)), directory / "part-0.parquet")


def manifest(ws) -> dict:
    return json.loads((ws.features / "_feature_set.json").read_text())


def feature_rows(ws) -> dict[str, dict]:
    table = pq.read_table(ws.features, partitioning="hive")
    return {row["transaction_id"]: row for row in table.to_pylist()}


def test_declared_user_columns_pass_through_the_feature_table(workspace):
    n = 400
    rng = np.random.default_rng(1)
    v1 = rng.normal(size=n)
    device = rng.choice(["ios", "android", "web"], size=n).tolist()
    device[3] = None
    table = curated_table(n, V1=pa.array(v1), device_type=pa.array(device, pa.string()))
    write_curated(workspace, table)
    summary = build_feature_table(workspace)
    written = manifest(workspace)
    assert written["user_features"] == {"V1": "numeric", "device_type": "categorical"}
    assert written["categorical_features"] == ["device_type"]
    assert written["feature_columns"][-2:] == ["V1", "device_type"]
    assert written["feature_groups"]["user columns"] == ["V1", "device_type"]
    assert summary.feature_groups["user columns"] == 2
    rows = feature_rows(workspace)
    for i in (0, 3, 17):
        row = rows[f"x{i:05d}"]
        assert row["V1"] == pytest.approx(v1[i])
        assert row["device_type"] == device[i]
    # The built-in features are still computed next to them.
    assert rows["x00017"]["log_amount"] is not None


def test_days_ingested_before_a_user_column_was_declared_still_build(workspace):
    # Ingests with different column maps leave daily files with different columns;
    # they are read by name, the older days holding NULL in the newer column.
    n = 400
    score = pa.array(np.arange(n, dtype=float))
    table = curated_table(n, risk_score=score)
    days = sorted(set(table["dt"].to_pylist()))
    write_curated(workspace, table)
    for day in days[:3]:  # rewritten as an earlier ingest without the column
        path = workspace.curated / f"dt={day}" / "part-0.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["risk_score"]), path)
    summary = build_feature_table(workspace)
    assert summary.rows == n
    assert manifest(workspace)["user_features"] == {"risk_score": "numeric"}
    rows = feature_rows(workspace)
    early = set(table.filter(pc.is_in(table["dt"], pa.array(days[:3])))["transaction_id"]
                .to_pylist())
    assert early and all(rows[t]["risk_score"] is None for t in early)
    assert all(rows[t]["risk_score"] == float(t[1:]) for t in rows if t not in early)


def test_features_whose_inputs_have_no_values_are_left_out_not_constant(workspace):
    write_curated(workspace, curated_table(300))  # channel, country and is_cash all null
    summary = build_feature_table(workspace)
    written = manifest(workspace)
    left_out = {"is_cash_tx", "channel_card_present", "channel_ecommerce", "channel_atm",
                "new_channel_for_customer", "new_country_for_customer"}
    assert left_out.isdisjoint(written["feature_columns"])
    assert set(written["feature_columns"]) == set(FEATURE_COLUMNS) - left_out
    assert written["left_out_groups"] == {
        "customer x channel": "no channel values", "customer x country": "no country values",
        "cash": "no is_cash values", "channel": "no channel values"}
    assert summary.left_out_groups == written["left_out_groups"]
    rows = feature_rows(workspace)
    assert {row["channel_ecommerce"] for row in rows.values()} == {None}
    assert "customer" in written["feature_groups"] and "terminal" in written["feature_groups"]


def test_without_customer_and_terminal_ids_their_features_are_left_out(workspace):
    write_curated(workspace, curated_table(300, ids=False, V2=pa.array(np.arange(300.0))))
    build_feature_table(workspace)
    written = manifest(workspace)
    assert set(written["feature_groups"]) == {"amount and time", "user columns"}
    assert {"customer", "terminal", "customer x terminal"} <= set(written["left_out_groups"])
    assert written["left_out_groups"]["customer"] == "no customer_id values"
    kept = [c for c in written["feature_columns"] if c != "V2"]
    assert kept and all(not FEATURE_NEEDS[c] for c in kept)
    rows = feature_rows(workspace)
    assert {row["cust_tx_count_1d"] for row in rows.values()} == {None}
    assert {row["term_fraud_rate_7d"] for row in rows.values()} == {None}


def test_feature_needs_follow_aggregates_and_earlier_features():
    assert FEATURE_NEEDS["amount_zscore_30d"] == {"customer_id"}  # via cust_avg_amount_30d
    assert FEATURE_NEEDS["new_terminal_for_customer"] == {"customer_id", "terminal_id"}
    assert FEATURE_NEEDS["channel_ecommerce"] == {"channel"}  # not 'ecommerce' the literal
    assert FEATURE_NEEDS["hour_cos"] == frozenset()


def test_a_user_column_named_like_a_built_in_feature_is_refused():
    with pytest.raises(FeatureLayoutError, match="'log_amount' has the name of a built-in"):
        FeatureLayout(user_features=(("log_amount", "numeric"),))


def test_a_curated_user_column_of_another_type_is_a_clear_error():
    with pytest.raises(FeatureLayoutError, match="'seen_at' has type TIMESTAMP"):
        layout_of({"transaction_id": "VARCHAR", "seen_at": "TIMESTAMP"}, [])


# --- through the pipeline: preprocess, train, evaluate, register -------------------------


def signal_only_in_user_columns(n: int, days: int, seed: int = 8) -> pa.Table:
    """Fraud depends only on a numeric user column and a categorical one; amounts, times
    and ids carry no signal."""
    rng = np.random.default_rng(seed)
    v1 = rng.normal(size=n)
    device = rng.choice(["ios", "android", "web", "emulator"], p=[0.4, 0.4, 0.19, 0.01],
                        size=n)
    fraud = (v1 > 2.1) | ((device == "emulator") & (rng.random(n) < 0.8))
    table = curated_table(n, seed=seed, V1=pa.array(v1), device_type=pa.array(device))
    times = np.sort(rng.integers(0, days * 86_400, n))
    stamps = [T0 + timedelta(seconds=int(s)) for s in times]
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                             pa.array(stamps, pa.timestamp("us", tz="UTC")))
    table = table.set_column(table.schema.get_field_index("dt"), "dt",
                             pa.array([t.strftime("%Y-%m-%d") for t in stamps]))
    return table.set_column(table.schema.get_field_index("is_fraud"), "is_fraud",
                            pa.array(fraud.astype(np.int8)))


def model_archive(ws, run):
    """The model the pipeline registers: the Train step's (the refit) model.tar.gz."""
    return ws.local_path(run.execution.step("Train").properties["ModelArtifacts"][
        "S3ModelArtifacts"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Features and a local pipeline run on data whose signal is only in user columns."""
    from pipelines.core.workspace import Workspace
    from pipelines.fraud.local_run import read_evaluation, run_pipeline_locally

    ws = Workspace.open(tmp_path_factory.mktemp("user") / "ws")
    table = signal_only_in_user_columns(n=16_000, days=24)
    write_curated(ws, table)
    build_feature_table(ws, label_delay_days=2)
    run = run_pipeline_locally(ws, {"QualityThresholdAP": 0.0}, progress=False)
    assert run.succeeded, run.failure()
    return ws, run, read_evaluation(ws, run.execution), table


@pytest.mark.slow
def test_a_model_whose_only_signal_is_in_user_columns_beats_chance_widely(trained):
    ws, _, evaluation, table = trained
    report = json.loads(evaluation.path.read_text())
    fraud_rate = report["n_fraud"] / report["n_test"]
    assert evaluation.average_precision >= max(0.6, 20 * fraud_rate)
    assert evaluation.roc_auc >= 0.9


@pytest.mark.slow
def test_the_model_package_records_user_features_and_their_categories(trained, tmp_path):
    import tarfile

    from pipelines.core.code import unit_dir
    from pipelines.serving.endpoint.handler import load_inference_module

    handler = load_inference_module(unit_dir("inference"))
    ws, run, _, _ = trained
    with tarfile.open(model_archive(ws, run)) as tar:
        tar.extractall(tmp_path, filter="data")
    feature_set = json.loads((tmp_path / "feature_set.json").read_text())
    assert feature_set["user_features"] == {"V1": "numeric", "device_type": "categorical"}
    assert "emulator" in feature_set["categories"]["device_type"]
    model = handler.model_fn(tmp_path)
    row = dict.fromkeys(model.feature_columns, 0.0)
    row.update(V1=0.0, device_type="emulator")
    risky = handler.predict_fn(handler.input_fn(json.dumps(row), "application/json"), model)
    row.update(device_type="ios")
    safe = handler.predict_fn(handler.input_fn(json.dumps(row), "application/json"), model)
    assert risky[0] > safe[0]
    row.update(device_type="never-seen")  # the shared "other" code, not an error
    assert handler.predict_fn(handler.input_fn(json.dumps(row), "application/json"), model)
    del row["V1"]
    with pytest.raises(handler.BadRequest, match=r"lacks features \['V1'\]"):
        handler.predict_fn(handler.input_fn(json.dumps(row), "application/json"), model)
    # A CSV row carries the category as text in its column.
    values = [("emulator" if n == "device_type" else "0") for n in model.feature_columns]
    scored = handler.predict_fn(handler.input_fn(",".join(values), "text/csv"), model)
    assert scored[0] == pytest.approx(risky[0])


@pytest.mark.slow
def test_batch_and_stream_scoring_feed_user_columns_to_the_model(trained, tmp_path):
    """Batch scoring reads them from the feature table, the stream from each transaction;
    both give the model the same rows, hence the same scores."""
    import tarfile

    from pipelines.core.code import unit_dir
    from pipelines.serving.endpoint.handler import load_inference_module
    from pipelines.serving.online.engine import OnlineFeatureEngine
    from pipelines.serving.scoring.batch import feature_matrix
    from pipelines.serving.stream.core import curated_rows, model_matrix

    handler = load_inference_module(unit_dir("inference"))
    ws, run, _, table = trained
    with tarfile.open(model_archive(ws, run)) as tar:
        tar.extractall(tmp_path, filter="data")
    model = handler.model_fn(tmp_path)
    last_day = max(table["dt"].to_pylist())
    features = pq.read_table(ws.features / f"dt={last_day}").sort_by("transaction_id")
    batch_scores = handler.predict_fn(feature_matrix(features, model.feature_columns), model)

    engine = OnlineFeatureEngine(label_delay_days=2)
    rows = curated_rows(table.sort_by([("timestamp", "ascending"),
                                       ("transaction_id", "ascending")]))
    online = [(row, engine.process(row)) for row in rows]
    last = sorted((pair for pair in online if pair[0]["transaction_id"]
                   in set(features["transaction_id"].to_pylist())),
                  key=lambda pair: pair[0]["transaction_id"])
    matrix = model_matrix([f for _, f in last], engine, model.feature_columns,
                          [r for r, _ in last])
    assert matrix.dtype == object  # device_type travels as text
    stream_scores = handler.predict_fn(matrix, model)
    np.testing.assert_allclose(stream_scores, batch_scores, rtol=1e-6)


# --- two days, no ids: the short-history split and the amount-and-time group only --------


@pytest.fixture(scope="module")
def anonymised(tmp_path_factory):
    """Two days of id-less transactions whose signal is in anonymised numeric columns,
    some amounts zero (card verifications), run through features and the pipeline."""
    from pipelines.core.workspace import Workspace
    from pipelines.fraud.local_run import read_evaluation, run_pipeline_locally

    rng = np.random.default_rng(21)
    n = 12_000
    components = rng.normal(size=(n, 6))
    fraud = (components[:, 0] + 0.8 * components[:, 3] > 2.9) & (rng.random(n) < 0.9)
    components[fraud, 1] -= 2.0  # a second component shifts for frauds
    amounts = np.round(rng.lognormal(3, 1.2, n), 2)
    amounts[rng.random(n) < 0.01] = 0.0
    table = curated_table(n, seed=21, ids=False,
                          **{f"V{i + 1}": pa.array(components[:, i]) for i in range(6)})
    stamps = [T0 + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 2 * 86_400, n))]
    for name, values in (("timestamp", pa.array(stamps, pa.timestamp("us", tz="UTC"))),
                         ("dt", pa.array([t.strftime("%Y-%m-%d") for t in stamps])),
                         ("amount", pa.array(amounts)),
                         ("is_fraud", pa.array(fraud.astype(np.int8)))):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    ws = Workspace.open(tmp_path_factory.mktemp("anonymised") / "ws")
    write_curated(ws, table)
    summary = build_feature_table(ws)  # the default 7-day label delay
    run = run_pipeline_locally(ws, {"QualityThresholdAP": 0.0}, progress=False)
    assert run.succeeded, run.failure(ws).message
    return summary, read_evaluation(ws, run.execution), fraud.mean()


@pytest.mark.slow
def test_two_id_less_days_train_a_model_far_above_chance(anonymised):
    summary, evaluation, fraud_rate = anonymised
    assert set(summary.feature_groups) == {"amount and time", "user columns"}
    assert "customer" in summary.left_out_groups and "terminal" in summary.left_out_groups
    split = evaluation.split
    assert split["method"] == "fractions" and split["label_delay_gap_hours"] == 12
    assert evaluation.average_precision >= max(0.5, 20 * fraud_rate)
    assert evaluation.card_precision_at_k is None  # no card ids to rank


@pytest.mark.slow
def test_zero_amounts_reach_the_feature_table(anonymised):
    summary, _, _ = anonymised
    assert summary.rows == 12_000  # none refused for a zero amount


@pytest.mark.slow
def test_the_spark_engine_builds_the_same_layout(tmp_path):
    pytest.importorskip("pyspark")
    from pipelines.core.workspace import Workspace

    n = 300
    rng = np.random.default_rng(4)
    table = curated_table(n, V1=pa.array(rng.normal(size=n)),
                          device_type=pa.array(rng.choice(["a", "b"], size=n)))
    built = {}
    for engine in ("duckdb", "spark"):
        ws = Workspace.open(tmp_path / engine)
        write_curated(ws, table)
        build_feature_table(ws, engine=engine)
        built[engine] = (manifest(ws), feature_rows(ws))
    (duck_manifest, duck_rows), (spark_manifest, spark_rows) = built["duckdb"], built["spark"]
    assert spark_manifest == duck_manifest
    for tid, row in duck_rows.items():
        other = spark_rows[tid]
        assert other["device_type"] == row["device_type"]
        assert other["V1"] == pytest.approx(row["V1"])
        assert other["channel_ecommerce"] is None and row["channel_ecommerce"] is None
