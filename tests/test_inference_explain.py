"""inference.py on AWS: contributions when asked (reason codes on AWS alerts) and the
batch transform's Parquet in, scored table out (the workflow's score task)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.lake.tables import SCORED_SCHEMA
from pipelines.serving.stream.models import SageMakerEndpointModel
from pipelines.workflow.declaration import FRAUD_WORKFLOW, PARQUET
from pipelines.workflow.render import to_state_machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_inference_handler as handler_tests  # noqa: E402

FEATURES, inference = handler_tests.FEATURES, handler_tests.inference
model_dir, model = handler_tests.model_dir, handler_tests.model  # the shared fixtures


def _serve(model, body: bytes | str, content_type: str, accept: str):
    """What the container does with a request: input_fn, predict_fn, output_fn."""
    return inference.output_fn(
        inference.predict_fn(inference.input_fn(body, content_type), model), accept)


def test_an_explain_request_gets_each_rows_top_contributions(model):
    rows = [{"amount_log": 3.0, "tx_count_1d": 0.1, "terminal_risk_7d": 2.5},
            {"amount_log": -1.0, "tx_count_1d": None, "terminal_risk_7d": 0.0}]
    plain = json.loads(_serve(model, json.dumps({"instances": rows}), "application/json", ""))
    answer = json.loads(_serve(model, json.dumps({"instances": rows, "explain": 2}),
                               "application/json", "application/json"))
    predictions = answer["predictions"]
    assert [p["score"] for p in predictions] == [p["score"] for p in plain["predictions"]]
    for prediction in predictions:
        assert len(prediction["top"]) == 2
        assert {t["feature"] for t in prediction["top"]} <= set(FEATURES)
        # bias + all contributions = log-odds; the top ones push the score most.
        assert isinstance(prediction["bias"], float)
    assert "top" not in plain["predictions"][0]
    with pytest.raises(inference.BadRequest, match='"explain" must be a whole number'):
        inference.input_fn(json.dumps({"instances": rows, "explain": "yes"}), "application/json")


def test_the_stream_lambda_asks_the_endpoint_for_contributions(model):
    class Endpoint:
        """sagemaker-runtime answering with the real handler."""

        def __init__(self):
            self.bodies = []

        def invoke_endpoint(self, **request):
            self.bodies.append(json.loads(request["Body"]))
            body = _serve(model, request["Body"], request["ContentType"], request["Accept"])
            return {"Body": io.BytesIO(body.encode())}

    client = Endpoint()
    endpoint = SageMakerEndpointModel("fraud", list(FEATURES), 0.5, 3, client)
    matrix = np.array([[3.0, 0.1, 2.5]])
    (explained,) = endpoint.explain(matrix)
    assert explained["top"] and explained["top"][0]["feature"] in FEATURES
    assert client.bodies[0]["explain"] > 0


def _features_file() -> bytes:
    frame = pd.DataFrame({
        "transaction_id": ["t1", "t2"], "customer_id": ["c1", "c2"],
        "terminal_id": ["T1", "T2"],
        "timestamp": pd.to_datetime(["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z"]),
        "amount": [12.5, 900.0], "amount_log": [1.0, 3.0], "tx_count_1d": [0.0, 4.0],
        "terminal_risk_7d": [0.0, 2.5], "is_fraud": [0, 1],
    })
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def test_a_features_parquet_file_comes_back_as_the_scored_tables_rows(model, monkeypatch):
    monkeypatch.setenv(inference.VERSION_ENV, "4")
    monkeypatch.setenv(inference.THRESHOLD_ENV, "0.5")
    body = _serve(model, _features_file(), PARQUET, PARQUET)
    table = pq.read_table(pa.BufferReader(body))
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in SCORED_SCHEMA]
    rows = table.to_pylist()
    assert [r["transaction_id"] for r in rows] == ["t1", "t2"]
    assert {r["model_version"] for r in rows} == {4}
    assert all(r["decision"] == ("alert" if r["score"] >= 0.5 else "clear") for r in rows)


def test_parquet_output_without_the_transform_jobs_environment_is_refused(model, monkeypatch):
    monkeypatch.delenv(inference.VERSION_ENV, raising=False)
    with pytest.raises(inference.UnsupportedMediaType, match="FRAUD_MODEL_VERSION"):
        _serve(model, _features_file(), PARQUET, PARQUET)


def test_the_score_task_sets_the_environment_the_handler_reads():
    parameters = to_state_machine(FRAUD_WORKFLOW)["States"]["score"]["Parameters"]
    names = {k.removesuffix(".$") for k in parameters["Environment"]}
    assert names == {inference.VERSION_ENV, inference.THRESHOLD_ENV}
    assert parameters["TransformInput"]["ContentType"] == inference.PARQUET_TYPE == PARQUET
