"""Endpoint: latency and throughput at 1, 8 and 32 concurrent clients, keep-alive or not.

The server runs in its own process exactly as the deployer starts it
(``python -m pipelines.serving.endpoint.server``), hosting the repository's
``inference.py`` with a model the size training produces (34 features, 400
rounds, depth 5). Every request is one transaction as JSON with named features
(what the workflow and stream clients send).

Two measurements per client count, each with keep-alive connections and with a
new connection per request (connect + request + close, as ``urllib`` clients do):

* latency at the bounded load: 200 requests/s in total, split over the clients,
  sent on a fixed schedule (open loop) and timed from the scheduled send, so a
  slow response also penalises the requests queued behind it. Target: p99 <= 10 ms
  and no errors, at every client count. The shared 2-core machines are noisy (other
  jobs take whole cores for seconds), so the load runs in three windows: p50 and
  p99 are the window with the median p99, max and errors cover all three;
* throughput: every client sends its next request as soon as the last one is
  answered (closed loop), for a few seconds; requests/s and the latencies under
  that saturation (at 32 clients these are queueing, roughly clients/throughput).
  The clients are threads of this one process, so the figure is a lower bound.

Also measured: 32 keep-alive clients at the bounded load without the predict lock,
to show what serialising ``predict_fn`` costs.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench._harness import Result
from pipelines.core.code import unit_dir
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.serving.deploy.sample_model import synthetic_features, train_model_files

AREA = "endpoint"
RATE = 200.0  # requests per second in total at the bounded load
LATENCY_SECONDS = 3.0  # per window
WINDOWS = 3
THROUGHPUT_SECONDS = 3.0
CLIENTS = (1, 8, 32)
TARGET_P99_MS = 10.0


def start_server(model_dir: Path, run_dir: Path, lock: bool) -> tuple[subprocess.Popen, str]:
    ready = run_dir / f"ready-{lock}.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pipelines.serving.endpoint.server",
        "--model-dir", str(model_dir), "--code-dir", str(unit_dir("inference")),
        "--ready-file", str(ready), "--log-file", str(run_dir / "endpoint.log"),
    ]
    if not lock:
        command.append("--no-predict-lock")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"endpoint did not start; see {run_dir / 'endpoint.log'}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["url"]


@dataclass
class Tally:
    """Latencies (ms) and failures collected by the client threads."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, milliseconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.append(milliseconds)
            if error:
                self.errors.append(error)


class Client:
    """One client: a keep-alive connection, or a new connection per request."""

    def __init__(self, url: str, keep_alive: bool) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.keep_alive = keep_alive
        self.conn: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> str | None:
        """One request; an error description, or None for a 200."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(*self.address, timeout=10)
        try:
            self.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            response.read()
            error = None if response.status == 200 else f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        if not self.keep_alive or error:
            self.conn.close()
            self.conn = None
        return error

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def open_loop(client: Client, bodies: list[bytes], rate: float, seconds: float, offset: float,
              tally: Tally) -> None:
    start = time.perf_counter() + offset
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        error = client.send(bodies[i % len(bodies)])
        tally.add((time.perf_counter() - scheduled) * 1000, error)


def closed_loop(client: Client, bodies: list[bytes], seconds: float, tally: Tally) -> None:
    end = time.perf_counter() + seconds
    i = 0
    while (sent := time.perf_counter()) < end:
        error = client.send(bodies[i % len(bodies)])
        tally.add((time.perf_counter() - sent) * 1000, error)
        i += 1


def run_clients(url: str, clients: int, keep_alive: bool,
                work: Callable[[Client, int, Tally], None]) -> tuple[Tally, float]:
    tally = Tally()
    connections = [Client(url, keep_alive) for _ in range(clients)]
    threads = [threading.Thread(target=work, args=(c, i, tally))
               for i, c in enumerate(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return tally, elapsed


def figures(tally: Tally, elapsed: float) -> dict[str, float]:
    values = np.array(tally.latencies)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "rate": len(values) / elapsed,
            "errors": float(len(tally.errors))}


def bounded(url: str, bodies: list[bytes], clients: int, keep_alive: bool,
            seconds: float = LATENCY_SECONDS, windows: int = WINDOWS) -> dict[str, float]:
    """The median-p99 window's p50/p99; max and errors over every window."""
    per_client = RATE / clients
    runs = sorted((figures(*run_clients(url, clients, keep_alive, lambda c, i, t: open_loop(
        c, bodies, per_client, seconds, i / RATE, t))) for _ in range(windows)),
        key=lambda f: f["p99"])
    median = dict(runs[len(runs) // 2])
    median["max"] = max(f["max"] for f in runs)
    median["errors"] = sum(f["errors"] for f in runs)
    return median


def saturated(url: str, bodies: list[bytes], clients: int, keep_alive: bool) -> dict[str, float]:
    return figures(*run_clients(url, clients, keep_alive, lambda c, _i, t: closed_loop(
        c, bodies, THROUGHPUT_SECONDS, t)))


def request_bodies(rows: np.ndarray) -> list[bytes]:
    """One transaction per request, as JSON with named features."""
    names = list(FEATURE_COLUMNS)
    return [json.dumps({"instances": [dict(zip(names, map(float, row), strict=True))]}).encode()
            for row in rows]


def _latency_results(label: str, f: dict[str, float]) -> list[Result]:
    ok = f["p99"] <= TARGET_P99_MS and f["errors"] == 0
    return [
        Result(AREA, f"{label} p50 @{RATE:g}/s", f["p50"], "ms"),
        Result(AREA, f"{label} p99 @{RATE:g}/s", f["p99"], "ms", f"<= {TARGET_P99_MS:g}", ok),
        Result(AREA, f"{label} max @{RATE:g}/s", f["max"], "ms"),
        Result(AREA, f"{label} errors @{RATE:g}/s", f["errors"], "requests", "0",
               f["errors"] == 0),
    ]


def _throughput_results(label: str, f: dict[str, float]) -> list[Result]:
    return [
        Result(AREA, f"{label} throughput", f["rate"], "req/s"),
        Result(AREA, f"{label} p50/p99/max saturated",
               f["p99"], "ms (p99)", f"p50 {f['p50']:.1f}, max {f['max']:.1f}"),
        Result(AREA, f"{label} errors saturated", f["errors"], "requests", "0",
               f["errors"] == 0),
    ]


def run(size: int, workdir: Path) -> list[Result]:
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = train_model_files(
        workdir / "model", features=FEATURE_COLUMNS, rows=20_000, num_round=400, max_depth=5
    )
    rows = synthetic_features(500, FEATURE_COLUMNS, seed=1)[list(FEATURE_COLUMNS)].to_numpy()
    bodies = request_bodies(rows)
    results: list[Result] = []
    process, url = start_server(model_dir, workdir, lock=True)
    try:
        bounded(url, bodies, 1, True, seconds=1.0, windows=1)  # warm-up
        for keep_alive in (True, False):
            mode = "keep-alive" if keep_alive else "new connection"
            for clients in CLIENTS:
                label = f"{clients} client{'s' if clients > 1 else ''}, {mode}"
                results += _latency_results(label, bounded(url, bodies, clients, keep_alive))
                results += _throughput_results(label, saturated(url, bodies, clients,
                                                                keep_alive))
    finally:
        process.terminate()
        process.wait(timeout=10)
    process, url = start_server(model_dir, workdir, lock=False)
    try:
        bounded(url, bodies, 1, True, seconds=1.0, windows=1)
        results += _latency_results("32 clients, keep-alive, no predict lock",
                                    bounded(url, bodies, 32, True))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return results
