"""Local endpoint: SageMaker's /ping and /invocations, hardened against bad input."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xgboost as xgb

from pipelines.core.code import unit_dir
from pipelines.serving.deploy.sample_model import (
    SAMPLE_FEATURES,
    synthetic_features,
    train_model_files,
)
from pipelines.serving.endpoint.handler import InferenceHandler
from pipelines.serving.endpoint.server import EndpointServer

LIMIT = 4096  # a small body limit so the 413 test stays small


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_model_files(tmp_path_factory.mktemp("model"))


def start(handler: InferenceHandler, max_body_bytes: int = LIMIT):
    server = EndpointServer(("127.0.0.1", 0), handler, max_body_bytes=max_body_bytes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def server(model_dir):
    server, thread = start(InferenceHandler.load(model_dir, unit_dir("inference")))
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def request(server, method, path, body=None, headers=None):
    """One request on a fresh connection: (status, headers, parsed or raw body)."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, response.getheader("Content-Type"), raw


def rows(n: int, seed: int = 1) -> np.ndarray:
    return synthetic_features(n, SAMPLE_FEATURES, seed)[list(SAMPLE_FEATURES)].to_numpy()


def expected_scores(model_dir: Path, values: np.ndarray) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    return booster.predict(xgb.DMatrix(values, feature_names=list(SAMPLE_FEATURES)))


def csv_body(values: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in values)


def assert_healthy(server, model_dir):
    """The server still answers /ping and scores a valid request correctly."""
    assert request(server, "GET", "/ping")[0] == 200
    values = rows(2, seed=9)
    status, _, body = request(
        server, "POST", "/invocations", csv_body(values), {"Content-Type": "text/csv"}
    )
    assert status == 200
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    np.testing.assert_allclose(scores, expected_scores(model_dir, values), rtol=1e-6)


def test_ping_answers_when_the_model_is_loaded(server):
    assert request(server, "GET", "/ping")[0] == 200


def test_csv_request_gets_the_models_scores(server, model_dir):
    values = rows(5)
    status, content_type, body = request(
        server,
        "POST",
        "/invocations",
        csv_body(values),
        {"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert status == 200 and content_type == "text/csv"
    scores = [float(line) for line in body.decode().split()]
    np.testing.assert_allclose(scores, expected_scores(model_dir, values), rtol=1e-6)


def test_json_request_with_named_features_and_accept_honoured(server, model_dir):
    values = rows(3)
    instances = [dict(zip(SAMPLE_FEATURES, map(float, row), strict=True)) for row in values]
    payload = json.dumps({"instances": instances})
    status, content_type, body = request(
        server, "POST", "/invocations", payload, {"Content-Type": "application/json"}
    )
    assert status == 200 and content_type == "application/json"
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    np.testing.assert_allclose(scores, expected_scores(model_dir, values), rtol=1e-6)

    status, content_type, body = request(
        server,
        "POST",
        "/invocations",
        payload,
        {"Content-Type": "application/json; charset=utf-8", "Accept": "text/csv"},
    )
    assert status == 200 and content_type == "text/csv"
    assert len(body.decode().split()) == 3


BAD_REQUESTS = {
    "malformed json": ("POST", "/invocations", b'{"instances": [1, 2', "application/json", 400),
    "json of strings": (
        "POST",
        "/invocations",
        b'{"instances": [["a", "b", "c", "d"]]}',
        "application/json",
        400,
    ),
    "json missing features": ("POST", "/invocations", b'{"amount": 3.0}', "application/json", 400),
    "non-numeric csv": ("POST", "/invocations", b"1,2,abc,4", "text/csv", 400),
    "csv header row": ("POST", "/invocations", ",".join(SAMPLE_FEATURES).encode(), "text/csv", 400),
    "too few columns": ("POST", "/invocations", b"1,2,3", "text/csv", 400),
    "too many columns": ("POST", "/invocations", b"1,2,3,4,5", "text/csv", 400),
    "ragged csv": ("POST", "/invocations", b"1,2,3,4\n1,2", "text/csv", 400),
    "malformed csv quoting": ("POST", "/invocations", b'1,2,"3,4', "text/csv", 400),
    "not utf-8": ("POST", "/invocations", b"\xff\xfe\x00", "text/csv", 400),
    "empty body": ("POST", "/invocations", b"", "text/csv", 400),
    "blank body": ("POST", "/invocations", b"  \n ", "application/json", 400),
    "infinite value": ("POST", "/invocations", b"1,2,inf,4", "text/csv", 400),
    "too large": ("POST", "/invocations", b"1," * LIMIT + b"1", "text/csv", 413),
    "wrong content type": ("POST", "/invocations", b"1,2,3,4", "application/xml", 415),
    "no content type": ("POST", "/invocations", b"1,2,3,4", None, 415),
    "unknown path": ("GET", "/predict", None, None, 404),
    "unknown path post": ("POST", "/models/x/invoke", b"1,2,3,4", "text/csv", 404),
    "get invocations": ("GET", "/invocations", None, None, 405),
    "post ping": ("POST", "/ping", b"x", "text/plain", 405),
    "delete": ("DELETE", "/invocations", None, None, 405),
    "made-up method": ("BREW", "/ping", None, None, 405),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_their_status_and_the_server_lives_on(server, model_dir, case):
    method, path, body, content_type, expected = BAD_REQUESTS[case]
    headers = {"Content-Type": content_type} if content_type else {}
    status, response_type, raw = request(server, method, path, body, headers)
    assert status == expected
    assert response_type == "application/json"
    message = json.loads(raw)
    assert message["status"] == expected and message["error"]
    assert_healthy(server, model_dir)


def test_unacceptable_accept_is_406(server, model_dir):
    status, _, raw = request(
        server,
        "POST",
        "/invocations",
        b"1,2,3,4",
        {"Content-Type": "text/csv", "Accept": "application/x-parquet"},
    )
    assert status == 406 and "Accept" in json.loads(raw)["error"]
    assert_healthy(server, model_dir)


def raw_exchange(server, data: bytes) -> bytes:
    """Send raw bytes, return what the server answers before closing."""
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_body_is_refused_from_content_length_before_reading(server, model_dir):
    # Claims 100 MB but sends 10 bytes: an answer proves the body was never awaited.
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Content-Length: 104857600\r\n\r\n1,2,3,4\r\n"
    )
    answer = raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"exceeds the limit" in answer
    assert_healthy(server, model_dir)


def test_missing_or_invalid_content_length(server, model_dir):
    no_length = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\r\n"
    assert raw_exchange(server, no_length).startswith(b"HTTP/1.1 411")
    bad_length = no_length.replace(b"\r\n\r\n", b"\r\nContent-Length: -5\r\n\r\n")
    assert raw_exchange(server, bad_length).startswith(b"HTTP/1.1 400")
    garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"
    assert raw_exchange(server, garbage).startswith(b"HTTP/1.1 400")
    assert_healthy(server, model_dir)


def test_six_megabytes_is_the_default_limit(model_dir):
    from pipelines.serving.endpoint.server import DEFAULT_MAX_BODY_BYTES

    assert DEFAULT_MAX_BODY_BYTES == 6 * 1024 * 1024


def test_an_unexpected_handler_error_is_a_500_and_the_server_survives():
    calls = {"n": 0}

    def predict_fn(data, model):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("booster exploded")
        return [0.25]

    module = SimpleNamespace(
        input_fn=lambda body, content_type: body,
        predict_fn=predict_fn,
        output_fn=lambda prediction, accept: json.dumps(prediction),
    )
    srv, thread = start(InferenceHandler(module=module, model=None))
    try:
        status, _, raw = request(srv, "POST", "/invocations", b"1", {"Content-Type": "text/csv"})
        assert status == 500
        assert "booster exploded" in json.loads(raw)["error"]
        status, _, raw = request(srv, "POST", "/invocations", b"1", {"Content-Type": "text/csv"})
        assert (status, json.loads(raw)) == (200, [0.25])
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_concurrent_clients_all_get_correct_scores(server, model_dir):
    values = rows(64, seed=3)
    expected = expected_scores(model_dir, values)

    def client(offset: int) -> list[float]:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        scores = []
        try:
            for i in range(offset, len(values), 8):  # keep-alive: many requests per connection
                conn.request(
                    "POST",
                    "/invocations",
                    csv_body(values[i : i + 1]),
                    {"Content-Type": "text/csv", "Accept": "text/csv"},
                )
                response = conn.getresponse()
                assert response.status == 200
                scores.append((i, float(response.read())))
        finally:
            conn.close()
        return scores

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [pair for part in pool.map(client, range(8)) for pair in part]
    assert len(results) == len(values)
    got = np.array([score for _, score in sorted(results)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_expect_continue_gets_413_before_the_body_is_sent(server, model_dir):
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Content-Length: 104857600\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    assert_healthy(server, model_dir)
