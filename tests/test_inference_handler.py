"""The SageMaker inference handler (inference/inference.py) on a tiny real model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

HANDLER = Path(__file__).resolve().parent.parent / "inference" / "inference.py"
FEATURES = ["amount_log", "tx_count_1d", "terminal_risk_7d"]


def load_handler():
    """Import inference.py by path, as the SageMaker container does."""
    name = "container_inference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HANDLER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


inference = load_handler()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model directory as training/train.py writes it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(FEATURES)))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 2]) > 1.5).astype(float)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
        xgb.DMatrix(x, label=y, feature_names=FEATURES),
        num_boost_round=15,
    )
    out = tmp_path_factory.mktemp("model")
    booster.save_model(str(out / "xgboost-model.json"))
    (out / "feature_set.json").write_text(
        json.dumps({"version": "t1", "feature_columns": FEATURES, "label_column": "is_fraud"})
    )
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return inference.model_fn(str(model_dir))


def booster_scores(model_dir: Path, rows: list[list[float]]) -> np.ndarray:
    """The reference: the saved booster's own predictions."""
    booster = xgb.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    matrix = xgb.DMatrix(np.array(rows, dtype=float), feature_names=FEATURES)
    return booster.predict(matrix)


ROWS = [[3.2, 1.0, 0.9], [0.1, 4.0, -0.3], [math.nan, 0.0, 2.5]]


def invoke(body, content_type, model, accept="application/json"):
    return inference.output_fn(
        inference.predict_fn(inference.input_fn(body, content_type), model), accept
    )


# --- round trips ---------------------------------------------------------------


def test_csv_round_trip_scores_equal_the_booster(model, model_dir):
    body = "3.2,1.0,0.9\n0.1,4.0,-0.3\n,0,2.5\n"  # empty cell = missing
    response = json.loads(invoke(body, "text/csv", model))
    scores = [item["score"] for item in response["predictions"]]
    np.testing.assert_allclose(scores, booster_scores(model_dir, ROWS), rtol=1e-6)


def test_csv_response_is_one_score_per_line(model, model_dir):
    body = b"3.2,1.0,0.9\r\n0.1,4.0,-0.3\r\n"
    text = invoke(body, "text/csv; charset=utf-8", model, accept="text/csv")
    lines = text.strip().split("\n")
    np.testing.assert_allclose(
        [float(v) for v in lines], booster_scores(model_dir, ROWS[:2]), rtol=1e-6
    )


def test_csv_missing_values_and_padding_parse_the_same_on_every_path(model):
    # Clean numeric CSV takes the vectorised parser, padded cells the cell-by-cell one.
    clean = inference.input_fn("1.5,,3\n4,nan,-6e-1\n", "text/csv").values
    padded = inference.input_fn(" 1.5 , ,3\n4 ,nan, -6e-1\n\n", "text/csv").values
    expected = np.array([[1.5, np.nan, 3.0], [4.0, np.nan, -0.6]])
    np.testing.assert_array_equal(clean, expected)
    np.testing.assert_array_equal(padded, expected)


def test_json_objects_match_by_name_and_ignore_extra_keys(model, model_dir):
    instances = [
        {"transaction_id": "t1", "terminal_risk_7d": 0.9, "amount_log": 3.2, "tx_count_1d": 1},
        {"amount_log": 0.1, "tx_count_1d": 4, "terminal_risk_7d": -0.3},
        {"amount_log": None, "tx_count_1d": 0, "terminal_risk_7d": 2.5},
    ]
    response = json.loads(invoke(json.dumps({"instances": instances}), "application/json", model))
    scores = [item["score"] for item in response["predictions"]]
    np.testing.assert_allclose(scores, booster_scores(model_dir, ROWS), rtol=1e-6)


def test_json_arrays_and_single_object(model, model_dir):
    arrays = {"instances": [[3.2, 1.0, 0.9], [None, 0, 2.5]]}
    response = json.loads(invoke(json.dumps(arrays), "application/json", model))
    expected = booster_scores(model_dir, [ROWS[0], ROWS[2]])
    np.testing.assert_allclose([p["score"] for p in response["predictions"]], expected, rtol=1e-6)

    single = {"amount_log": 3.2, "tx_count_1d": 1.0, "terminal_risk_7d": 0.9}
    response = json.loads(invoke(json.dumps(single).encode(), "application/json", model, "*/*"))
    assert len(response["predictions"]) == 1
    assert response["predictions"][0]["score"] == pytest.approx(float(expected[0]), rel=1e-6)


def test_contributions_explain_the_log_odds(model, model_dir):
    data = inference.input_fn("3.2,1.0,0.9\n0.1,4.0,-0.3\n", "text/csv")
    reasons = inference.contributions(data, model, top_n=2)
    booster = xgb.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    margins = booster.predict(
        xgb.DMatrix(np.array(ROWS[:2]), feature_names=FEATURES), output_margin=True
    )
    for row, margin, values in zip(reasons, margins, ROWS[:2], strict=True):
        assert row["bias"] + sum(row["contributions"].values()) == pytest.approx(margin, abs=1e-4)
        assert len(row["top"]) == 2
        top = [item["contribution"] for item in row["top"]]
        assert top == sorted(row["contributions"].values(), reverse=True)[:2]
        for item in row["top"]:
            assert item["value"] == values[FEATURES.index(item["feature"])]


# --- bad requests --------------------------------------------------------------

BAD_REQUESTS = [
    ("empty body", "", "text/csv", "empty"),
    ("blank JSON body", b"  \n", "application/json", "empty"),
    ("malformed JSON", '{"instances": [[1, 2, 3]', "application/json", "malformed JSON at line 1"),
    ("ragged CSV", "1,2,3\n4,5\n", "text/csv", "CSV row 2 has 2 values but row 1 has 3"),
    ("non-numeric CSV", "1,2,3\n4,abc,6\n", "text/csv", "CSV row 2 column 2: 'abc'"),
    ("CSV header", "amount_log,tx_count_1d,terminal_risk_7d\n1,2,3\n", "text/csv", "header"),
    ("infinite CSV", "1,inf,3\n", "text/csv", "row 1 column 2: infinite"),
    ("not UTF-8", b"\xff\xfe1,2,3", "text/csv", "not UTF-8"),
    (
        "string in array",
        '{"instances": [[1, "x", 3]]}',
        "application/json",
        "instance 0 position 1",
    ),
    ("bool in array", '{"instances": [[1, true, 3]]}', "application/json", "not a number"),
    ("empty instances", '{"instances": []}', "application/json", "'instances' is empty"),
    ("instances not a list", '{"instances": 5}', "application/json", "must be a list"),
    ("mixed instances", '{"instances": [[1, 2, 3], {"a": 1}]}', "application/json", "all be"),
    ("ragged arrays", '{"instances": [[1, 2, 3], [1, 2]]}', "application/json", "instance 1 has 2"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_raises_bad_request_with_a_useful_message(model, body, content_type, message):
    with pytest.raises(inference.BadRequest) as caught:
        invoke(body, content_type, model)
    assert message in str(caught.value)
    assert caught.value.status_code == 400


def test_wrong_number_of_columns_names_the_expected_features(model):
    data = inference.input_fn("1,2\n3,4\n", "text/csv")
    with pytest.raises(inference.BadRequest) as caught:
        inference.predict_fn(data, model)
    message = str(caught.value)
    assert "2 values but the model expects 3" in message
    assert "amount_log, tx_count_1d, terminal_risk_7d" in message


def test_missing_feature_in_an_object_is_named(model):
    body = json.dumps({"instances": [{"amount_log": 1, "tx_count_1d": 2}]})
    with pytest.raises(
        inference.BadRequest, match=r"instance 0 lacks features \['terminal_risk_7d'\]"
    ):
        invoke(body, "application/json", model)


def test_non_numeric_feature_value_in_an_object_is_named(model):
    body = json.dumps({"amount_log": "12.5", "tx_count_1d": 2, "terminal_risk_7d": 0})
    with pytest.raises(
        inference.BadRequest, match="feature 'amount_log': \"12.5\" is not a number"
    ):
        invoke(body, "application/json", model)


@pytest.mark.parametrize("content_type", ["application/x-recordio-protobuf", "text/plain", None])
def test_unsupported_content_type(model, content_type):
    with pytest.raises(inference.UnsupportedMediaType, match="text/csv or application/json"):
        inference.input_fn("1,2,3", content_type)


def test_unsupported_accept(model):
    prediction = inference.predict_fn(inference.input_fn("1,2,3", "text/csv"), model)
    with pytest.raises(inference.UnsupportedMediaType, match="Accept 'application/xml'"):
        inference.output_fn(prediction, "application/xml")
    # A list with one supported type is honoured.
    assert inference.output_fn(prediction, "application/xml, text/csv;q=0.5").count("\n") == 1


def test_model_fn_names_the_missing_file(tmp_path):
    (tmp_path / "feature_set.json").write_text(json.dumps({"feature_columns": FEATURES}))
    with pytest.raises(FileNotFoundError, match="xgboost-model.json"):
        inference.model_fn(str(tmp_path))


def test_model_fn_rejects_a_feature_set_that_does_not_match_the_booster(model_dir, tmp_path):
    (tmp_path / "xgboost-model.json").write_bytes((model_dir / "xgboost-model.json").read_bytes())
    (tmp_path / "feature_set.json").write_text(
        json.dumps({"feature_columns": list(reversed(FEATURES))})
    )
    with pytest.raises(ValueError, match="redeploy"):
        inference.model_fn(str(tmp_path))


def test_programmatic_frames_are_scored_by_column_name(model, model_dir):
    import pandas as pd

    frame = pd.DataFrame(ROWS, columns=FEATURES)[list(reversed(FEATURES))].assign(extra="x")
    np.testing.assert_allclose(
        inference.predict_fn(frame, model), booster_scores(model_dir, ROWS), rtol=1e-6
    )
    with pytest.raises(inference.BadRequest, match="non-numeric"):
        inference.predict_fn(frame.assign(amount_log="high"), model)
