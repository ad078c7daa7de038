"""Local stand-in for a SageMaker real-time endpoint: ``/ping`` and ``/invocations``.

A stdlib ``ThreadingHTTPServer`` hosts the model's ``inference.py`` exactly as
the SageMaker container does. It is hardened for untrusted input: every bad
request gets a precise 4xx status with a JSON ``{"error", "status"}`` body,
the body size is checked from ``Content-Length`` before anything is read
(6 MB like SageMaker), and every request runs inside a catch-all so an
unexpected error is a 500 for that request only, never a dead server.

Worker model and time limits (``Limits``): one thread per connection, at most
``max_connections`` at once (beyond that a connection gets an immediate 503),
behind a listen backlog of ``LISTEN_BACKLOG`` so a burst of clients is queued
by the kernel instead of having SYNs dropped (with the stdlib's backlog of 5, a
burst of 16 clients saw one-second connect retries). Reads are timed per
connection: an idle keep-alive connection is closed after ``keep_alive``
seconds; once a request's first byte arrives, its headers and body must arrive
within ``request`` seconds (else 408); and a body that stops arriving for
``body_stall`` seconds is answered 400 (shorter than its ``Content-Length``)
without waiting out the whole deadline.

Run detached by the deployer as
``python -m pipelines.serving.endpoint.server --model-dir D --code-dir C --port 0 --ready-file F``;
the ready file receives ``{"pid", "port", "url"}`` once the model is loaded
and the socket is listening.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipelines.core.fileio import write_json_atomically
from pipelines.serving.endpoint.handler import InferenceHandler

LOG = logging.getLogger("fraudops.endpoint")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker real-time payload limit
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = ("text/csv", "application/json")
# Response types, default first: JSON when the client sends no Accept (as inference.py does).
RESPONSE_TYPES: tuple[str, ...] = ("application/json", "text/csv")
# The kernel queues this many connections not yet accepted (capped by net.core.somaxconn).
LISTEN_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 256
# Exceptions an input parser raises on input it cannot handle; from ``input_fn``
# they are the request's fault (400), never the server's.
_PARSE_FAILURES = (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError,
                   UnicodeError)


@dataclass(frozen=True)
class Limits:
    """Per-connection time limits in seconds (see the module docstring)."""

    keep_alive: float = 5.0
    request: float = 10.0
    body_stall: float = 1.0
    write: float = 5.0

    def __post_init__(self) -> None:
        for name in ("keep_alive", "request", "body_stall", "write"):
            if getattr(self, name) <= 0:
                raise ValueError(f"time limit {name} must be > 0 seconds")


class HttpError(Exception):
    """A request problem with its HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(header_value: str | None) -> str:
    """``"text/csv; charset=utf-8"`` -> ``"text/csv"``."""
    return (header_value or "").split(";", 1)[0].strip().lower()


def negotiate_accept(accept_header: str | None, offered: Sequence[str] = RESPONSE_TYPES) -> str:
    """The response type: the first offered type the client accepts.

    No ``Accept`` (or ``*/*``) gets the first offered type, JSON.
    """
    wanted = [media_type(part) for part in (accept_header or "").split(",") if part.strip()]
    if not wanted or "*/*" in wanted:
        return offered[0]
    for candidate in wanted:
        if candidate in offered:
            return candidate
        if candidate.endswith("/*"):
            prefix = candidate[:-1]
            for offer in offered:
                if offer.startswith(prefix):
                    return offer
    raise HttpError(
        HTTPStatus.NOT_ACCEPTABLE,
        f"cannot answer in {accept_header!r}: use Accept {' or '.join(offered)}",
    )


class _Clock:
    """The read deadline of one connection: idle between requests, one per request."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline: float | None = None  # None: waiting for the next request
        self.in_body = False

    def next_request(self) -> None:
        self.deadline, self.in_body = None, False

    def start_body(self) -> None:
        if self.deadline is None:  # the headers came in an earlier read
            self.deadline = time.monotonic() + self.limits.request
        self.in_body = True

    @property
    def started(self) -> bool:
        return self.deadline is not None

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def timeout(self) -> float:
        """Seconds the next read may wait; ``TimeoutError`` once the request's time is up."""
        if self.deadline is None:
            return self.limits.keep_alive
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's time limit passed")
        return min(remaining, self.limits.body_stall) if self.in_body else remaining

    def received(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.limits.request


class _TimedSocketReader(io.RawIOBase):
    """The connection's receiving side, each read bounded by the connection's clock."""

    def __init__(self, sock: socket.socket, clock: _Clock) -> None:
        super().__init__()
        self._sock = sock
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._sock.settimeout(self._clock.timeout())
        count = self._sock.recv_into(buffer)
        if count:
            self._clock.received()
        return count


class EndpointServer(ThreadingHTTPServer):
    """The HTTP server holding one loaded model (read-only once loaded)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: InferenceHandler,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        content_types: Sequence[str] = SUPPORTED_CONTENT_TYPES,
        limits: Limits | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        super().__init__(address, _RequestHandler)
        self.inference = handler
        self.max_body_bytes = max_body_bytes
        self.content_types = tuple(content_types)
        self.limits = limits or Limits()
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection while a slot is free; otherwise an immediate 503."""
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        body = json.dumps({
            "error": f"the endpoint is serving its maximum of {self.max_connections} "
                     "connections: retry shortly", "status": 503}).encode()
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
        try:
            request.settimeout(self.limits.write)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


class _RequestHandler(BaseHTTPRequestHandler):
    server: EndpointServer
    server_version = "fraudops-endpoint/1"
    protocol_version = "HTTP/1.1"
    # A buffered writer: headers and body leave in one send (``_send`` flushes).
    # Nagle stays off for anything written in more than one flush.
    wbufsize = -1
    disable_nagle_algorithm = True

    ROUTES = {"/ping": "GET", "/invocations": "POST"}

    def setup(self) -> None:
        super().setup()
        self.clock = _Clock(self.server.limits)
        self.rfile = io.BufferedReader(_TimedSocketReader(self.connection, self.clock))

    def handle_one_request(self) -> None:
        """One request; a request whose headers stop arriving gets a 408, not silence."""
        self.clock.next_request()
        self.requestline, self.request_version = "", "HTTP/1.1"
        self._responded = False
        super().handle_one_request()  # a read timeout there closes the connection
        if self.close_connection and self.clock.started and not self._responded:
            # Bytes of a request came but its headers never completed (a timeout or a
            # client gone mid-request): say why, then close.
            self._body_consumed = False
            self._send_error(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request did not arrive within {self.server.limits.request:g} s: "
                "send the headers and body promptly",
            )

    # Every HTTP method, including unknown ones, goes through one router so a
    # wrong method is a 405 rather than the stdlib's 501.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return lambda: self._route(name[3:])
        raise AttributeError(name)

    def _route(self, method: str) -> None:
        self._body_consumed = self._has_no_body(method)
        try:
            path = self.path.split("?", 1)[0]
            if path not in self.ROUTES:
                raise HttpError(
                    HTTPStatus.NOT_FOUND, f"no such path {path!r}: use /ping or /invocations"
                )
            if method != self.ROUTES[path]:
                raise HttpError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{method} is not allowed on {path}: use {self.ROUTES[path]}",
                )
            if path == "/ping":
                self._send(HTTPStatus.OK, b"", "application/json")
            else:
                self._invocations()
        except HttpError as exc:
            self._send_error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # the server must outlive any single request
            LOG.exception("unexpected error on %s %s", method, self.path)
            self._send_error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}"
            )

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (``Expect: 100-continue``)."""
        try:
            self._content_length()
        except HttpError as exc:
            self._body_consumed = False
            self._send_error(exc.status, exc.message)
            return False
        go_on = super().handle_expect_100()
        self.wfile.flush()  # the interim 100 Continue must leave now, not with the answer
        return go_on

    def _has_no_body(self, method: str) -> bool:
        """True when nothing follows the headers, so the connection can be kept alive."""
        length = self.headers.get("Content-Length")
        if length is not None:
            return length.strip() == "0"
        return method in ("GET", "HEAD") and "Transfer-Encoding" not in self.headers

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header is required")
        try:
            length = int(raw)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {raw!r}") from None
        if length < 0:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {raw!r}")
        if length > self.server.max_body_bytes:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes exceeds the limit of "
                f"{self.server.max_body_bytes} bytes: send fewer rows per request",
            )
        return length

    def _invocations(self) -> None:
        length = self._content_length()
        offered = self.server.content_types
        content_type = media_type(self.headers.get("Content-Type"))
        if content_type not in offered:
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"unsupported Content-Type {content_type or '(none)'!r}: "
                f"use {' or '.join(offered)}",
            )
        accept = negotiate_accept(self.headers.get("Accept"))
        body = self._read_body(length)
        self._body_consumed = True
        if not body.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty request body: send one or more rows")
        payload, response_type = self._run_handler(body, content_type, accept)
        self._send(HTTPStatus.OK, payload, response_type)

    def _read_body(self, length: int) -> bytes:
        """Exactly ``length`` bytes, or a 400 (body stalled or cut short) / 408 (too slow)."""
        self.clock.start_body()
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(length - received)
                if not chunk:
                    raise HttpError(
                        HTTPStatus.BAD_REQUEST,
                        f"request body shorter than Content-Length: the client closed after "
                        f"{received} of {length} bytes",
                    )
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            limits = self.server.limits
            if self.clock.expired:
                raise HttpError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"request body not received within {limits.request:g} s ({received} of "
                    f"{length} bytes): send the body promptly",
                ) from None
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"request body shorter than Content-Length: {received} of {length} bytes, "
                f"then nothing for {limits.body_stall:g} s",
            ) from None
        return b"".join(chunks)

    def _run_handler(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        inference = self.server.inference
        bad_request = inference.bad_request_error
        unsupported = inference.unsupported_media_error
        try:
            data = inference.parse(body, content_type)
        except bad_request as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except unsupported as exc:
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, str(exc)) from None
        except _PARSE_FAILURES as exc:  # a handler that does not raise BadRequest itself
            LOG.info("input_fn raised %s on a request: answered 400", type(exc).__name__)
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"the request body cannot be parsed ({type(exc).__name__}"
                f"{': ' + detail if detail else ''})",
            ) from None
        try:
            prediction = inference.predict(data)
        except bad_request as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        try:
            return inference.render(prediction, accept)
        except unsupported as exc:
            raise HttpError(HTTPStatus.NOT_ACCEPTABLE, str(exc)) from None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the stdlib finds while parsing (bad request line, long URI) as JSON too."""
        if self.request_version == "HTTP/0.9":  # unparseable request: answer in HTTP/1.1
            self.request_version = "HTTP/1.1"
        self._body_consumed = False
        status = HTTPStatus(code)
        self._send_error(status, message or status.phrase)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        if not self._body_consumed:
            # The unread body would be parsed as the next request: end the connection.
            self.close_connection = True
        body = json.dumps({"error": message, "status": int(status)}).encode()
        try:
            self._send(status, body, "application/json")
        except OSError:  # the client is gone or not reading: nothing more to say
            self.close_connection = True

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self._responded = True
        self.connection.settimeout(self.server.limits.write)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        LOG.info("%s %s", self.address_string(), format % args)


def configure_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    """Quiet logging: start/stop and errors to a file (stderr if none)."""
    handler: logging.Handler
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def write_ready_file(path: Path, server: EndpointServer) -> None:
    """Announce pid, port and URL atomically, so the deployer never reads half a file."""
    info = {
        "pid": os.getpid(),
        "port": server.server_address[1],
        "url": server.url,
        "started_at": datetime.now(UTC).isoformat(),
    }
    write_json_atomically(path, info)


def limit_model_threads(threads: int) -> None:
    """Give each request ``threads`` OpenMP threads (XGBoost's), process-wide.

    The server already runs requests in parallel; an OpenMP team per one-row
    request only spins against the other requests on a small host (measured
    on 2 shared cores: 29 ms per predict with all cores, 0.9 ms with one).
    It must be set before XGBoost's OpenMP runtime loads, so before the handler
    imports xgboost; a process that already imported it keeps its setting.
    """
    if threads < 1:
        raise ValueError(f"threads per request must be >= 1, got {threads}")
    if "xgboost" in sys.modules:
        LOG.info("xgboost already imported: OMP_NUM_THREADS left as it is")
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)


def serve(
    model_dir: Path,
    code_dir: Path,
    program: str = "inference.py",
    host: str = DEFAULT_HOST,
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready_file: Path | None = None,
    predict_lock: bool = True,
    on_ready: Callable[[EndpointServer], None] | None = None,
    threads_per_request: int = 1,
    limits: Limits | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Load the model, listen, and serve until SIGTERM/SIGINT (foreground)."""
    limit_model_threads(threads_per_request)
    handler = InferenceHandler.load(model_dir, code_dir, program, lock=predict_lock)
    server = EndpointServer((host, port), handler, max_body_bytes=max_body_bytes,
                            limits=limits, max_connections=max_connections)

    def stop(signum: int, _frame: Any) -> None:
        LOG.info("signal %s: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    if ready_file:
        write_ready_file(ready_file, server)
    LOG.info("serving %s from %s on %s", program, model_dir, server.url)
    if on_ready:
        on_ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        LOG.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serving.endpoint.server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--code-dir", type=Path, required=True)
    parser.add_argument("--program", default="inference.py")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--no-predict-lock", action="store_true")
    parser.add_argument("--threads-per-request", type=int, default=1)
    defaults = Limits()
    parser.add_argument("--keep-alive-timeout", type=float, default=defaults.keep_alive,
                        help="seconds an idle keep-alive connection stays open")
    parser.add_argument("--request-timeout", type=float, default=defaults.request,
                        help="seconds a request's headers and body may take to arrive")
    parser.add_argument("--body-stall-timeout", type=float, default=defaults.body_stall,
                        help="seconds without body bytes before the body counts as short")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    args = parser.parse_args(argv)
    configure_logging(args.log_file)
    try:
        serve(
            args.model_dir,
            args.code_dir,
            args.program,
            host=args.host,
            port=args.port,
            max_body_bytes=args.max_body_bytes,
            ready_file=args.ready_file,
            predict_lock=not args.no_predict_lock,
            threads_per_request=args.threads_per_request,
            limits=Limits(keep_alive=args.keep_alive_timeout, request=args.request_timeout,
                          body_stall=args.body_stall_timeout),
            max_connections=args.max_connections,
        )
    except KeyboardInterrupt:
        return 0
    except Exception:
        LOG.exception("endpoint failed to start")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
