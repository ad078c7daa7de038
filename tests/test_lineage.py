"""Model lineage: a registered, approved, deployed model traced to its exact training data.

``build_trained_workspace`` writes the records a real run leaves (curated and
feature partitions, ingestion log and audit entry, Preprocess outputs,
evaluation, model artifact, code tarball, execution store, registry decision,
deployment history) through the owning units' public APIs, so the fast tests
see the same shapes as ``fraudops run``. The slow test runs the real thing.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main
from pipelines.compliance import audit
from pipelines.core.schema import CURATED_SCHEMA
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION
from pipelines.data.lake import refresh_catalog
from pipelines.model.deployments import DeploymentHistory
from pipelines.model.executor.store import ExecutionStore, now_iso
from pipelines.model.lineage import LineageError, resolve_lineage
from pipelines.model.registry import LocalModelRegistry

EXEC_ID = "exec0001"
PIPELINE = "fraud-detection"
INGESTION_ID = "ing-20260301T000000Z-test01"
DAYS = [date(2026, 3, 2) + timedelta(days=i) for i in range(6)]  # Mon 2 .. Sat 7 March
WINDOWS = {"train": (DAYS[0], DAYS[2]), "validation": (DAYS[3], DAYS[3]),
           "test": (DAYS[5], DAYS[5])}  # DAYS[4] is the label-delay gap


def curated_row(transaction_id: str, timestamp: str, customer_id: str, amount: float,
                **extra: Any) -> dict[str, Any]:
    """One curated transaction with sensible defaults (a card-present USD purchase)."""
    ts = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    row = dict.fromkeys(CURATED_SCHEMA.names)
    row.update(transaction_id=transaction_id, timestamp=ts, customer_id=customer_id,
               terminal_id="T1", amount=amount, card_token="tok-" + customer_id,
               card_masked="411111******1111", currency="USD", channel="card_present",
               country="US", is_cash=False, is_fraud=0, dt=ts.date().isoformat())
    row.update(extra)
    return row


def write_curated(ws: Workspace, rows: list[dict[str, Any]],
                  ingestion_id: str = INGESTION_ID) -> None:
    """Write rows as the ingest unit does (one file per run and day) and refresh the catalog."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["dt"], []).append(row)
    for day, part in by_day.items():
        directory = ws.curated / f"dt={day}"
        directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(part, schema=CURATED_SCHEMA)
        pq.write_table(table, directory / f"part-{ingestion_id}.parquet")
    refresh_catalog(ws)


def _put(ws: Workspace, uri: str, data: bytes) -> str:
    path = ws.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _feature_frame(day: date, rows: int, rng: np.random.Generator, shift: float) -> pa.Table:
    columns: dict[str, Any] = {
        "transaction_id": [f"TX{day:%Y%m%d}-{i:04d}" for i in range(rows)],
        "timestamp": pa.array([datetime(day.year, day.month, day.day, 12, tzinfo=UTC)] * rows),
        "customer_id": [f"C{i % 7}" for i in range(rows)],
        "terminal_id": ["T1"] * rows, "amount": rng.uniform(1, 100, rows),
        "is_fraud": pa.array([1 if i % 10 == 0 else 0 for i in range(rows)], pa.int8()),
    }
    for name in FEATURE_COLUMNS:
        columns[name] = rng.normal(shift, 1.0, rows)
    return pa.table(columns)


@dataclass
class TrainedWorkspace:
    ws: Workspace
    arn: str
    feature_hashes: dict[str, str]  # dt -> SHA-256 of the feature partition file
    curated_hashes: dict[str, str]
    code_sha: str


def build_trained_workspace(ws: Workspace, rows_per_day: int = 40,
                            recent_shift: float = 0.0) -> TrainedWorkspace:
    """A workspace holding every record of one trained, approved and deployed model.

    Feature values are N(0, 1) on training days and N(``recent_shift``, 1) on
    the test day, so drift on the test day is known in advance.
    """
    rng = np.random.default_rng(7)
    write_curated(ws, [curated_row(f"TX{d:%Y%m%d}-{i:04d}", f"{d}T12:00:00Z", f"C{i % 7}",
                                   10.0 + i) for d in DAYS for i in range(rows_per_day)])
    curated_hashes = {d.isoformat(): hashlib.sha256(
        (ws.curated / f"dt={d}" / f"part-{INGESTION_ID}.parquet").read_bytes()).hexdigest()
        for d in DAYS}
    log = {"ingestion_id": INGESTION_ID, "started_at": "2026-03-08T00:00:00+00:00",
           "finished_at": "2026-03-08T00:00:05+00:00", "rows_read": rows_per_day * len(DAYS),
           "rows_curated": rows_per_day * len(DAYS), "rows_quarantined": 0,
           "sources": [{"source_file": f"/landing/transactions_{d}.csv"} for d in DAYS]}
    (ws.logs / "ingest").mkdir(parents=True, exist_ok=True)
    (ws.logs / "ingest" / f"{INGESTION_ID}.json").write_text(json.dumps(log))
    audit.record(ws, "ingest.run", actor="ingest-bot", subject=INGESTION_ID,
                 details={"rows_curated": log["rows_curated"]})

    feature_hashes, frames = {}, {}
    for d in DAYS:
        frame = _feature_frame(d, rows_per_day, rng, recent_shift if d == DAYS[5] else 0.0)
        frames[d] = frame
        directory = ws.features / f"dt={d}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame, directory / "data_0.parquet")
        feature_hashes[d.isoformat()] = hashlib.sha256(
            (directory / "data_0.parquet").read_bytes()).hexdigest()
    (ws.features / "_feature_set.json").write_text(json.dumps(
        {"version": FEATURE_SET_VERSION, "feature_columns": list(FEATURE_COLUMNS)}))

    base = f"s3://artifacts/{PIPELINE}/{EXEC_ID}"
    windows = {name: {"start": a.isoformat(), "end": b.isoformat(), "days": (b - a).days + 1,
                      "rows": rows_per_day * ((b - a).days + 1),
                      "frauds": rows_per_day // 10 * ((b - a).days + 1), "dropped_unlabelled": 0}
               for name, (a, b) in WINDOWS.items()}
    outputs: dict[str, dict[str, str]] = {}
    for name, (a, b) in WINDOWS.items():
        manifest = {"version": FEATURE_SET_VERSION, "feature_columns": list(FEATURE_COLUMNS),
                    "split": {"name": name, "window": windows[name], "windows": windows,
                              "label_delay_days": 1, "validation_gap_days": 0}}
        data = pa.concat_tables([frames[d] for d in DAYS if a <= d <= b])
        buffer = io.BytesIO()
        pq.write_table(data, buffer)
        outputs[f"{base}/Preprocess/{name}"] = {
            "feature_set.json": _put(ws, f"{base}/Preprocess/{name}/feature_set.json",
                                     json.dumps(manifest).encode()),
            "data.parquet": _put(ws, f"{base}/Preprocess/{name}/data.parquet",
                                 buffer.getvalue()),
        }
    evaluation = {
        "binary_classification_metrics": {
            "average_precision": {"value": 0.61}, "roc_auc": {"value": 0.97},
            # A real fraction whose 16 digits pass the Luhn check: reports must format it.
            "precision_at_threshold": {"value": 0.8188405797101449, "threshold": 0.5},
            "recall_at_threshold": {"value": 0.28, "threshold": 0.5}},
        "alert_threshold": 0.5, "test_window": {"start": str(DAYS[5]), "end": str(DAYS[5])},
        "n_test": rows_per_day, "n_fraud": rows_per_day // 10, "alerts_at_threshold": 3,
        "pr_curve": {"precision": [0.1, 0.5, 1.0], "recall": [1.0, 0.5, 0.1],
                     "thresholds": [0.1, 0.5]},
    }
    evaluation_uri = f"{base}/Evaluate/evaluation/evaluation.json"
    _put(ws, evaluation_uri, json.dumps(evaluation).encode())
    model_buffer = io.BytesIO()
    with tarfile.open(fileobj=model_buffer, mode="w:gz") as archive:
        body = json.dumps({"train_aucpr_at_best": 0.63, "validation_aucpr": 0.34,
                           "best_iteration": 5, "xgboost_version": "3.2.0"}).encode()
        info = tarfile.TarInfo("training_metadata.json")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    model_uri = f"s3://artifacts/{PIPELINE}/models/job/output/model.tar.gz"
    _put(ws, model_uri, model_buffer.getvalue())
    code = b"processing code tarball"
    code_sha = hashlib.sha256(code).hexdigest()
    code_prefix = f"s3://artifacts/{PIPELINE}/code/processing/{code_sha}/"
    _put(ws, code_prefix + "sourcedir.tar.gz", code)

    registry = LocalModelRegistry(ws.registry_db)  # no bus: nothing deploys for real
    request = {"ModelPackageGroupName": PIPELINE, "ModelApprovalStatus": "PendingManualApproval",
               "ModelMetrics": {"ModelQuality": {"Statistics": {"S3Uri": evaluation_uri}}},
               "InferenceSpecification": {"Containers": [
                   {"Image": "xgboost:3.2-0", "ModelDataUrl": model_uri}]}}
    arn = registry.create_model_package(request, created_by="alice")["ModelPackageArn"]

    store = ExecutionStore(ws.executions)
    store.create_execution(EXEC_ID, PIPELINE, "alice", {"LabelDelayDays": 1}, "{}", now_iso())
    store.start_step(EXEC_ID, "Preprocess", "Processing", {"ProcessingInputs": [
        {"InputName": "features", "S3Input": {"S3Uri": "s3://lake/features/transactions"}},
        {"InputName": "code", "S3Input": {"S3Uri": code_prefix}}]})
    store.update_step(EXEC_ID, "Preprocess", status="Succeeded", end_time=now_iso(),
                      output_hashes=outputs,
                      metadata={"ProcessingJob": {"Arn": "arn:processing-job/pre"}})
    store.start_step(EXEC_ID, "Register", "RegisterModel", request)
    store.update_step(EXEC_ID, "Register", status="Succeeded", end_time=now_iso(),
                      metadata={"RegisterModel": {"Arn": arn}})
    store.finish_execution(EXEC_ID, "Succeeded", None)
    store.close()

    registry.update_model_package(arn, "Approved", "bob", "AP 0.61 above the 0.5 gate")
    DeploymentHistory(ws.registry_db).record(
        model_package_arn=arn, version=1, backend="local", status="InService",
        endpoint_url="http://127.0.0.1:1", message="serving version 1")
    return TrainedWorkspace(ws, arn, feature_hashes, curated_hashes, code_sha)


@pytest.fixture
def trained(workspace: Workspace) -> TrainedWorkspace:
    return build_trained_workspace(workspace)


def test_deployed_model_resolves_to_its_exact_training_partitions(trained: TrainedWorkspace):
    lineage = resolve_lineage(trained.ws)  # no version: the deployed one

    assert lineage["model_package"]["arn"] == trained.arn
    assert lineage["execution"]["id"] == EXEC_ID
    assert lineage["training_days"] == {
        "train": ["2026-03-02", "2026-03-03", "2026-03-04"],
        "validation": ["2026-03-05"], "test": ["2026-03-07"]}
    windows = {p["dt"]: p["window"] for p in lineage["feature_table"]["partitions"]}
    assert windows["2026-03-06"] == "unused"  # the label-delay gap feeds nothing
    hashes = {p["dt"]: p["files"][0]["sha256"] for p in lineage["feature_table"]["partitions"]}
    assert hashes == trained.feature_hashes
    assert lineage["feature_table"]["verified"] is True
    curated = {p["dt"]: p["files"][0] for p in lineage["curated"]["partitions"]}
    assert set(curated) == set(lineage["training_days"]["train"]
                               + lineage["training_days"]["validation"]
                               + lineage["training_days"]["test"])
    assert all(curated[d]["sha256"] == trained.curated_hashes[d] for d in curated)
    assert {f["ingestion_id"] for f in curated.values()} == {INGESTION_ID}
    (run,) = lineage["curated"]["ingestion_runs"]
    assert run["audit"]["actor"] == "ingest-bot"
    assert run["sources"][0] == "transactions_2026-03-02.csv"


def test_lineage_names_code_hashes_approver_deployment_and_definitions(
        trained: TrainedWorkspace):
    lineage = resolve_lineage(trained.ws, 1)

    (code,) = next(s for s in lineage["steps"] if s["name"] == "Preprocess")["code"]
    assert code["files"]["sourcedir.tar.gz"] == trained.code_sha
    assert code["matches_path"] is True
    assert [(d["Approver"], d["Reason"]) for d in lineage["approvals"]] == [
        ("bob", "AP 0.61 above the 0.5 gate")]
    assert [d["status"] for d in lineage["deployments"]] == ["InService"]
    assert lineage["evaluation"]["metrics"]["average_precision"] == 0.61
    assert lineage["feature_definitions"]["current_matches"] is True


def test_tampered_code_and_rebuilt_features_are_reported(trained: TrainedWorkspace):
    tarball = next(trained.ws.artifacts.rglob("sourcedir.tar.gz"))
    tarball.write_bytes(b"changed after training")
    extra = trained.ws.features / "dt=2026-03-03" / "data_1.parquet"
    pq.write_table(pq.read_table(trained.ws.features / "dt=2026-03-03" / "data_0.parquet"), extra)

    lineage = resolve_lineage(trained.ws, 1)

    (code,) = next(s for s in lineage["steps"] if s["name"] == "Preprocess")["code"]
    assert code["matches_path"] is False
    check = lineage["feature_table"]["window_row_check"]
    assert check["train"]["match"] is False and check["test"]["match"] is True
    assert "2026-03-03" in lineage["feature_table"]["rewritten_after_step"]
    assert lineage["feature_table"]["verified"] is False


def test_unknown_version_and_empty_workspace_are_clear_errors(trained: TrainedWorkspace,
                                                              tmp_path: Path):
    with pytest.raises(LineageError, match="does not exist"):
        resolve_lineage(trained.ws, 9)
    with pytest.raises(LineageError, match="no model has been deployed"):
        resolve_lineage(Workspace.open(tmp_path / "empty"))


def test_lineage_cli_prints_tree_and_json(trained: TrainedWorkspace, capsys):
    command = ["lineage", "1", "--workdir", str(trained.ws.root)]
    assert main(command) == 0
    tree = capsys.readouterr().out
    assert "execution exec0001" in tree and "verified unchanged" in tree and "bob" in tree
    assert main([*command, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_package"]["arn"] == trained.arn
    assert main(["lineage", "7", "--workdir", str(trained.ws.root)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_lineage_of_a_real_run_matches_the_split(tmp_path: Path):
    """End to end: ``fraudops run`` on a small dataset, then trace the deployed model."""
    root = tmp_path / "ws"
    # A small dataset trains a weak model: the gate at 0 lets it register (lineage is the
    # point here, not quality).
    subprocess.run([sys.executable, "-m", "pipelines.cli.main", "run", "--transactions", "20000",
                    "--days", "30", "--quality-threshold", "0", "--workdir", str(root)],
                   check=True, capture_output=True)
    ws = Workspace.open(root)
    try:
        lineage = resolve_lineage(ws)
        split = lineage["split"]
        train_days = lineage["training_days"]["train"]
        assert train_days[0] == split["train"]["start"]
        assert train_days[-1] == split["train"]["end"]
        assert len(train_days) == split["train"]["days"]
        assert lineage["feature_table"]["verified"] is True
        assert all(s["status"] == "Succeeded" for s in lineage["steps"])
        assert all(c["matches_path"] for s in lineage["steps"] for c in s["code"])
        assert lineage["curated"]["ingestion_runs"][0]["audit"] is not None
    finally:
        from pipelines.serving.deploy.local import stop_endpoint_process

        state = root / "state" / "endpoint.json"
        if state.is_file():  # the endpoint process this run started
            stop_endpoint_process(int(json.loads(state.read_text())["pid"]))
