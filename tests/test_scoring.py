"""Batch scoring: the feature table's day -> scored/dt=..., atomic and idempotent."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from pipelines.cli.main import main
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.deploy.local import LocalEndpointBackend
from pipelines.serving.deploy.sample_model import (
    SAMPLE_FEATURES,
    SAMPLE_PARAMETERS,
    create_request,
    synthetic_features,
    train_model_files,
    upload_model,
)
from pipelines.serving.deploy.selection import SelectionError
from pipelines.serving.scoring import SCORED_SCHEMA, ScoringError, load_model, score_day, score_file
from pipelines.serving.scoring.batch import partition_dir

DAY = "2026-01-05"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_model_files(tmp_path_factory.mktemp("model"))


@pytest.fixture
def registry(workspace):
    return LocalModelRegistry(workspace.registry_db)  # a bus without rules: nothing deploys


def register(workspace, registry, model_dir, approve=True, evaluation=None,
             parameters=SAMPLE_PARAMETERS) -> str:
    uri = upload_model(workspace, model_dir, "models/run-1/model.tar.gz")
    evaluation_uri = None
    if evaluation is not None:
        evaluation_uri = "s3://artifacts/evaluation/run-1/evaluation.json"
        path = workspace.local_path(evaluation_uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluation))
    request = create_request("fraud-detection", uri, evaluation_uri=evaluation_uri,
                             parameters=parameters)
    arn = registry.create_model_package(request, "alice")["ModelPackageArn"]
    if approve:
        registry.update_model_package(arn, APPROVED, "bob", "ok")
    return arn


def feature_rows(n: int, day: str, seed: int = 0, prefix: str = "tx") -> pa.Table:
    """Rows shaped like the feature table (CONTRACTS.md), for one day."""
    frame = synthetic_features(n, SAMPLE_FEATURES, seed).drop(columns="is_fraud")
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    frame.insert(0, "transaction_id", [f"{prefix}-{day}-{i}" for i in range(n)])
    frame.insert(1, "timestamp", [start + timedelta(seconds=30 * i) for i in range(n)])
    frame.insert(2, "customer_id", [f"c{i % 7}" for i in range(n)])
    frame.insert(3, "terminal_id", [f"t{i % 5}" for i in range(n)])
    frame["is_fraud"] = 0
    frame["dt"] = day
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_features(workspace, table: pa.Table, day: str = DAY) -> None:
    target = workspace.features / f"dt={day}"
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / "part-0.parquet")


def read_scored(workspace, day: str = DAY) -> pa.Table:
    files = sorted(partition_dir(workspace, day).glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def booster_scores(model_dir, table: pa.Table) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    frame = table.select(list(SAMPLE_FEATURES)).to_pandas()
    return booster.predict(xgb.DMatrix(frame))


def test_scoring_a_day_writes_the_scored_table(workspace, registry, model_dir):
    register(workspace, registry, model_dir)
    features = feature_rows(500, DAY)
    write_features(workspace, features)
    summary = score_day(workspace, DAY, load_model(workspace, version="1"))

    scored = read_scored(workspace)
    assert scored.schema == SCORED_SCHEMA
    assert summary.rows == scored.num_rows == 500
    assert summary.partitions == {DAY: 500}
    assert scored.column("transaction_id").to_pylist() == features["transaction_id"].to_pylist()
    expected = booster_scores(model_dir, features)
    np.testing.assert_allclose(scored.column("score").to_numpy(), expected, rtol=1e-6)
    decisions = np.where(expected >= 0.5, "alert", "clear")
    assert scored.column("decision").to_pylist() == decisions.tolist()
    assert summary.alerts == int((expected >= 0.5).sum()) > 0
    assert set(scored.column("model_version").to_pylist()) == {1}


def test_rerunning_a_day_replaces_it_without_duplicates(workspace, registry, model_dir):
    register(workspace, registry, model_dir)
    write_features(workspace, feature_rows(300, DAY))
    model = load_model(workspace, version="1")
    first = score_day(workspace, DAY, model)
    first_scored_at = read_scored(workspace).column("scored_at")[0].as_py()
    second = score_day(workspace, DAY, model)
    scored = read_scored(workspace)
    assert first.rows == second.rows == scored.num_rows == 300
    assert len(list(partition_dir(workspace, DAY).iterdir())) == 1
    assert scored.column("scored_at")[0].as_py() >= first_scored_at


def test_a_failed_write_leaves_the_previous_scores_intact(
    workspace, registry, model_dir, monkeypatch
):
    register(workspace, registry, model_dir)
    write_features(workspace, feature_rows(200, DAY))
    model = load_model(workspace, version="1")
    score_day(workspace, DAY, model)
    before = read_scored(workspace)

    def disk_full(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        score_day(workspace, DAY, model)
    assert [p.name for p in partition_dir(workspace, DAY).iterdir()] == ["part-00000.parquet"]
    assert read_scored(workspace).equals(before)


def test_threshold_comes_from_the_model_package_then_override(workspace, registry, model_dir):
    parameters = replace(SAMPLE_PARAMETERS, alert_threshold=0.3)
    register(workspace, registry, model_dir, evaluation={"alert_threshold": 0.2},
             parameters=parameters)
    assert load_model(workspace, version="1").threshold == 0.3
    assert load_model(workspace, version="1", threshold=0.9).threshold == 0.9
    with pytest.raises(ScoringError, match=r"--threshold must be a number in \[0, 1\], got 1.5"):
        load_model(workspace, version="1", threshold=1.5)


def test_a_package_without_run_parameters_takes_its_evaluation_threshold(
    workspace, registry, model_dir
):
    register(workspace, registry, model_dir, evaluation={"alert_threshold": 0.2}, parameters=None)
    assert load_model(workspace, version="1").threshold == 0.2


def test_scoring_a_file_merges_into_each_days_partition(workspace, registry, model_dir, tmp_path):
    register(workspace, registry, model_dir)
    write_features(workspace, feature_rows(100, DAY))
    model = load_model(workspace, version="1")
    score_day(workspace, DAY, model)
    # A late file: 10 of the day's transactions again plus 20 of the next day.
    late = pa.concat_tables(
        [feature_rows(100, DAY).slice(0, 10), feature_rows(20, "2026-01-06", seed=1)]
    )
    path = tmp_path / "late.parquet"
    pq.write_table(late, path)
    for _ in range(2):  # rerun: still no duplicates
        summary = score_file(workspace, path, model)
    assert summary.partitions == {DAY: 100, "2026-01-06": 20}
    day = read_scored(workspace)
    assert day.num_rows == 100 and len(set(day.column("transaction_id").to_pylist())) == 100


def test_missing_feature_column_is_named(workspace, registry, model_dir, tmp_path):
    register(workspace, registry, model_dir)
    path = tmp_path / "bad.parquet"
    pq.write_table(feature_rows(5, DAY).drop_columns(["is_night"]), path)
    with pytest.raises(ScoringError, match=r"bad.parquet lacks columns \['is_night'\]"):
        score_file(workspace, path, load_model(workspace, version="1"))


def test_only_approved_or_deployed_models_score(workspace, registry, model_dir):
    register(workspace, registry, model_dir, approve=False)
    with pytest.raises(SelectionError, match="PendingManualApproval"):
        load_model(workspace, version="1")
    with pytest.raises(SelectionError, match="no model is deployed"):
        load_model(workspace)


def test_missing_day_is_a_clear_error(workspace, registry, model_dir):
    register(workspace, registry, model_dir)
    with pytest.raises(ScoringError, match="no feature rows for 2026-02-01"):
        score_day(workspace, "2026-02-01", load_model(workspace, version="1"))


def test_cli_scores_with_the_deployed_model_and_registers_the_table(
    workspace, registry, model_dir, capsys, monkeypatch
):
    from pipelines.data.lake.query import run_query

    monkeypatch.setenv("COLUMNS", "200")
    arn = register(workspace, registry, model_dir)
    backend = LocalEndpointBackend(workspace)
    try:
        assert backend.deploy(registry.describe_model_package(arn)).status == "InService"
        write_features(workspace, feature_rows(50, DAY))
        code = main(["score", "--date", DAY, "--workdir", str(workspace.root)])
        assert code == 0
        assert "dt=2026-01-05 (50 rows)" in capsys.readouterr().out
    finally:
        backend.stop()
    counts = run_query(workspace, "SELECT dt, count(*) AS n FROM scored GROUP BY dt").to_pylist()
    assert counts == [{"dt": DAY, "n": 50}]
    bad_day = ["score", "--date", "31-01-2026", "--version", "1", "--workdir", str(workspace.root)]
    assert main(bad_day) == 2
    assert "not a day" in capsys.readouterr().err


def test_batch_scoring_keeps_the_stream_scorers_files(workspace):
    """A day rescored in batch replaces its own file, never the stream's micro-batches."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.serving.scoring.batch import SCORED_SCHEMA, partition_dir, write_partition

    now = datetime(2026, 2, 1, 12, tzinfo=UTC)

    def rows(tx):
        return pa.Table.from_pylist([{
            "transaction_id": tx, "customer_id": "c", "terminal_id": "t", "timestamp": now,
            "amount": 1.0, "score": 0.1, "decision": "clear", "model_version": 1,
            "scored_at": now}], schema=SCORED_SCHEMA)

    day_dir = partition_dir(workspace, "2026-02-01")
    day_dir.mkdir(parents=True)
    pq.write_table(rows("streamed"), day_dir / "stream-000001.parquet")
    write_partition(workspace, "2026-02-01", rows("batch-1"), merge=False)
    write_partition(workspace, "2026-02-01", rows("batch-2"), merge=False)
    assert sorted(p.name for p in day_dir.glob("*.parquet")) == [
        "part-00000.parquet", "stream-000001.parquet"]
    assert pq.read_table(day_dir / "part-00000.parquet")["transaction_id"].to_pylist() == [
        "batch-2"]


def _record_as_deployed(workspace, model_dir) -> None:
    """Register and approve the model, and record it as the endpoint's.

    Scoring loads the model itself; the endpoint record only says which version
    serves, so no endpoint process is needed here.
    """
    from pipelines.serving.deploy.local import endpoint_state_path

    arn = register(workspace, LocalModelRegistry(workspace.registry_db), model_dir)
    path = endpoint_state_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_package_arn": arn}))


def _raised(workspace) -> tuple[list, list]:
    """The primary alerts (card, transaction, severity, grouped count) and notification subjects."""
    from pipelines.core.notifications import ALERTS_TOPIC, read_outbox
    from pipelines.serving.alerts import CaseQueue

    alerts = sorted(
        (a["card_id"], a["transaction_id"], a["severity"], a["grouped"])
        for a in CaseQueue(workspace.cases_db).list_alerts(limit=10_000)
    )
    subjects = sorted(m["subject"] for m in read_outbox(workspace.outbox, ALERTS_TOPIC))
    return alerts, subjects


def test_fraudops_score_raises_the_same_alerts_as_the_runs_score_step(tmp_path, model_dir):
    """Both call pipelines.serving.score_and_alert: same day, same model -> same alerts."""
    from types import SimpleNamespace

    from pipelines.core.workspace import Workspace
    from pipelines.workflow.runner import RunContext
    from pipelines.workflow.steps import score as score_step

    features = feature_rows(600, DAY)
    by_cli, by_run = Workspace.open(tmp_path / "cli"), Workspace.open(tmp_path / "run")
    for ws in (by_cli, by_run):
        _record_as_deployed(ws, model_dir)
        write_features(ws, features)

    assert main(["score", "--date", DAY, "--workdir", str(by_cli.root)]) == 0
    # The score step reads only the webhook option; the rest of RunOptions is not needed.
    result = score_step(RunContext(by_run, SimpleNamespace(webhook_url=None)))

    alerts, subjects = _raised(by_cli)
    assert alerts, "the day must have scores above the threshold for this test to mean anything"
    assert (alerts, subjects) == _raised(by_run)
    assert result.days == [DAY]
    assert result.alerts == len(alerts) == len(subjects)
    assert result.grouped == sum(grouped for *_, grouped in alerts) > 0

    # Rescoring raises nothing new: the same transactions were alerted on already.
    again = score_step(RunContext(by_run, SimpleNamespace(webhook_url=None)))
    assert (again.alerts, again.grouped) == (0, 0)
    assert again.already_raised == result.alerts + result.grouped
    assert _raised(by_run) == (alerts, subjects)
