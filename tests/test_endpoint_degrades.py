"""An endpoint that degrades, never breaks (issue 14, item 5).

Every request the handler cannot score is a 4xx with a message (each case below
was a 500 or a hang before), slow and short-bodied clients are timed out
promptly, and a burst of clients is queued by the kernel, not dropped.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_endpoint import assert_healthy, request

from pipelines.core.code import unit_dir
from pipelines.serving.deploy.sample_model import SAMPLE_FEATURES, train_model_files
from pipelines.serving.endpoint.handler import InferenceHandler
from pipelines.serving.endpoint.server import EndpointServer, Limits

WIDTH = len(SAMPLE_FEATURES)
FAST = Limits(keep_alive=0.5, request=1.0, body_stall=0.3, write=2.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_model_files(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def handler(model_dir) -> InferenceHandler:
    return InferenceHandler.load(model_dir, unit_dir("inference"))


@contextmanager
def serving(handler, limits: Limits = FAST, max_connections: int = 64,
            start: bool = True) -> Iterator[EndpointServer]:
    server = EndpointServer(("127.0.0.1", 0), handler, limits=limits,
                            max_connections=max_connections)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    if start:
        thread.start()
    try:
        yield server
    finally:
        if not start:
            thread.start()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def server(handler):
    with serving(handler) as srv:
        yield srv


def post(server, body: bytes | str, content_type: str) -> tuple[int, dict]:
    status, _, raw = request(server, "POST", "/invocations", body, {"Content-Type": content_type})
    return status, json.loads(raw)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


UNSCORABLE = {
    "csv of two empty columns": (",\n,\n", "text/csv", "expects"),
    "csv blank lines only": ("\n\n \n", "text/csv", "empty"),
    "csv 400-digit number": (",".join(["1" * 400] + ["1"] * (WIDTH - 1)), "text/csv",
                             "infinite"),
    "csv beyond float32": (",".join(["1e39"] + ["1"] * (WIDTH - 1)), "text/csv", "too large"),
    "csv -infinity": (",".join(["-Infinity"] + ["1"] * (WIDTH - 1)), "text/csv", "infinite"),
    "csv underscore number": (",".join(["1_000"] + ["1"] * (WIDTH - 1)), "text/csv",
                              "not a number"),
    "csv hex number": (",".join(["0x10"] + ["1"] * (WIDTH - 1)), "text/csv", "not a number"),
    "json 400-digit integer": (json.dumps([[int("9" * 400)] + [1] * (WIDTH - 1)]),
                               "application/json", "400 digits is too large"),
    "json 5000-digit integer": ("[[" + "9" * 5000 + "]]", "application/json",
                                "cannot be read"),
    "json beyond float32": (json.dumps([[1e39] + [1] * (WIDTH - 1)]), "application/json",
                            "too large"),
    "json overflowing float": ("[[1e400" + ", 1" * (WIDTH - 1) + "]]", "application/json",
                               "infinite"),
    "json Infinity": ("[[Infinity" + ", 1" * (WIDTH - 1) + "]]", "application/json",
                      "infinite"),
    "json nested 100000 deep": (nested(100_000), "application/json", "nested too deep"),
    "json nested 50 deep": (json.dumps({"instances": [[nested(50)]]}), "application/json",
                            "not a number"),
    "json empty row": ('{"instances": [[]]}', "application/json", "expects"),
    "json empty object": ('{"instances": [{}]}', "application/json", "lacks features"),
    "json empty list": ("[]", "application/json", "empty"),
    "json scalar": ("5", "application/json", "must be a list"),
    "json null": ("null", "application/json", "must be a list"),
}


@pytest.mark.parametrize("case", sorted(UNSCORABLE))
def test_requests_the_handler_cannot_score_are_400_with_a_message(server, model_dir, case):
    body, content_type, message = UNSCORABLE[case]
    status, answer = post(server, body, content_type)
    assert status == 400, answer
    assert answer["status"] == 400 and message in answer["error"]
    assert len(answer["error"]) < 500
    assert_healthy(server, model_dir)


def test_a_row_of_all_missing_values_is_scored(server):
    status, answer = post(server, "," * (WIDTH - 1) + "\n", "text/csv")
    assert status == 200 and len(answer["predictions"]) == 1
    status, answer = post(server, json.dumps([[None] * WIDTH, [float("nan")] * WIDTH]),
                          "application/json")
    assert status == 200 and len(answer["predictions"]) == 2


def test_a_handler_that_raises_a_plain_error_on_input_is_400_not_500():
    def input_fn(body, content_type):
        return [int(x) for x in body.split(b",")][3]  # IndexError / ValueError on bad input

    module = SimpleNamespace(input_fn=input_fn, predict_fn=lambda data, model: [0.5],
                             output_fn=lambda prediction, accept: json.dumps(prediction))
    with serving(InferenceHandler(module=module, model=None)) as srv:
        for body, name in ((b"1,2", "IndexError"), (b"a,b,c,d", "ValueError")):
            status, answer = post(srv, body, "text/csv")
            assert status == 400 and name in answer["error"]
        assert post(srv, b"1,2,3,4", "text/csv") == (200, [0.5])


# --- slow and short clients -------------------------------------------------------------------
def exchange(server, data: bytes, half_close: bool = False, wait: float = 5.0) -> tuple[bytes,
                                                                                        float]:
    """Send ``data`` and keep the connection open; the answer and how long it took."""
    started = time.monotonic()
    with socket.create_connection(server.server_address[:2], timeout=wait) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


HEAD = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Content-Length: 100\r\n\r\n")


def test_a_body_shorter_than_content_length_is_answered_400_promptly(server, model_dir):
    answer, seconds = exchange(server, HEAD + b"1,2,3,4")
    assert answer.startswith(b"HTTP/1.1 400") and b"shorter than Content-Length" in answer
    assert seconds < FAST.body_stall + 0.7  # not the 30 s it used to hang
    answer, seconds = exchange(server, HEAD + b"1,2,3,4", half_close=True)
    assert answer.startswith(b"HTTP/1.1 400") and b"client closed after 7 of 100" in answer
    assert seconds < 0.5
    assert_healthy(server, model_dir)


def test_the_default_limits_answer_a_short_body_within_two_seconds(handler):
    with serving(handler, limits=Limits()) as srv:
        answer, seconds = exchange(srv, HEAD + b"1,2")
    assert answer.startswith(b"HTTP/1.1 400") and seconds < 2.0


def test_a_body_trickling_in_is_timed_out_with_408(server, model_dir):
    started = time.monotonic()
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(HEAD)
        answer = b""
        for _ in range(40):  # one byte every 0.1 s: never stalls, never finishes
            try:
                sock.sendall(b"1")
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            with suppress(BlockingIOError):
                answer += sock.recv(65536)
            sock.setblocking(True)
            if answer:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < FAST.request + 1.0
    assert_healthy(server, model_dir)


def test_headers_that_never_finish_get_408_and_idle_connections_close(server, model_dir):
    answer, seconds = exchange(server, b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408") and seconds < FAST.request + 0.7
    answer, seconds = exchange(server, b"")  # connects, says nothing: closed, no answer
    assert answer == b"" and seconds < FAST.keep_alive + 0.7
    assert_healthy(server, model_dir)


def test_expect_continue_gets_its_interim_answer_at_once(server):
    body = ",".join(["0.5"] * WIDTH).encode()
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection(server.server_address[:2], timeout=1) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# --- bursts --------------------------------------------------------------------------------
def test_a_burst_of_64_connections_is_queued_not_dropped(handler, model_dir):
    # The server is listening but not accepting yet: with the stdlib's backlog of 5,
    # connections past the sixth would wait for the client's SYN retry (1 s, then 3 s).
    with serving(handler, start=False) as srv:
        sockets, slowest = [], 0.0
        try:
            for _ in range(64):
                started = time.monotonic()
                sockets.append(socket.create_connection(srv.server_address[:2], timeout=0.5))
                slowest = max(slowest, time.monotonic() - started)
        finally:
            for sock in sockets:
                sock.close()
    assert slowest < 0.5


def test_32_concurrent_clients_all_scored(server, model_dir):
    body = ",".join(["0.5"] * WIDTH).encode()
    results: list[tuple[int, float]] = []

    def client() -> None:
        started = time.monotonic()
        status, _ = post(server, body, "text/csv")
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200] * 32
    assert max(seconds for _, seconds in results) < 0.9  # no one-second SYN retry


def test_connections_past_the_limit_get_an_immediate_503(handler, model_dir):
    with serving(handler, limits=Limits(keep_alive=5.0), max_connections=2) as srv:
        held = [socket.create_connection(srv.server_address[:2], timeout=2) for _ in range(2)]
        try:
            time.sleep(0.2)  # both accepted and waiting for a request
            answer, seconds = exchange(srv, b"")
            assert answer.startswith(b"HTTP/1.1 503") and seconds < 0.5
            assert b"maximum of 2 connections" in answer
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        assert_healthy(srv, model_dir)
