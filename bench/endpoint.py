"""Endpoint latency: one transaction per request at a bounded 200 requests/s on loopback.

Target: p99 <= 10 ms. The server runs in its own process exactly as the
deployer starts it (``python -m pipelines.endpoint.server``), hosting the
repository's ``inference.py`` with a model the size training produces (34
features, 400 rounds, depth 5). The client sends on a fixed schedule (open
loop) and measures each latency from the scheduled send time, so a slow
response delays and penalises the requests queued behind it.

Also measured: 4 concurrent clients (same total rate) with the predict lock
and without it, to show what serialising ``predict_fn`` costs.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench._harness import Result
from pipelines.deploy.artifacts import REPO_INFERENCE_DIR
from pipelines.deploy.sample_model import synthetic_features, train_model_files
from pipelines.features.definitions import FEATURE_COLUMNS

AREA = "endpoint"
RATE = 200.0  # requests per second, the bound the issue sets
SECONDS = 10.0
TARGET_P99_MS = 10.0


def start_server(model_dir: Path, run_dir: Path, lock: bool) -> tuple[subprocess.Popen, str]:
    ready = run_dir / f"ready-{lock}.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pipelines.endpoint.server",
        "--model-dir",
        str(model_dir),
        "--code-dir",
        str(REPO_INFERENCE_DIR),
        "--ready-file",
        str(ready),
        "--log-file",
        str(run_dir / "endpoint.log"),
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


def client(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    out: list[float],
    errors: list[int],
    offset: float = 0.0,
) -> None:
    """Open-loop sender on one keep-alive connection; latencies in ms into ``out``."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    count = int(rate * seconds)
    start = time.perf_counter() + offset
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        conn.request("POST", "/invocations", bodies[i % len(bodies)], headers)
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - scheduled) * 1000)
        if response.status != 200:
            errors.append(response.status)
    conn.close()


def measure(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    per_client = RATE / clients
    threads = [
        threading.Thread(
            target=client, args=(url, bodies, per_client, seconds, latencies, errors, i / RATE)
        )
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    values = np.array(latencies)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "rate": len(values) / elapsed,
        "errors": float(len(errors)),
    }


def run(size: int, workdir: Path) -> list[Result]:
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = train_model_files(
        workdir / "model", features=FEATURE_COLUMNS, rows=20_000, num_round=400, max_depth=5
    )
    rows = synthetic_features(500, FEATURE_COLUMNS, seed=1)[list(FEATURE_COLUMNS)].to_numpy()
    bodies = [",".join(f"{v:.6g}" for v in row).encode() for row in rows]
    results: list[Result] = []
    for lock in (True, False):
        process, url = start_server(model_dir, workdir, lock)
        try:
            measure(url, bodies, 1, 1.0)  # warm-up
            label = "lock" if lock else "no lock"
            if lock:
                single = measure(url, bodies, 1, SECONDS)
                results += [
                    Result(AREA, "1 client p50 latency", single["p50"], "ms"),
                    Result(
                        AREA,
                        "1 client p99 latency",
                        single["p99"],
                        "ms",
                        f"<= {TARGET_P99_MS:g}",
                        single["p99"] <= TARGET_P99_MS,
                    ),
                    Result(AREA, "1 client max latency", single["max"], "ms"),
                    Result(AREA, "achieved rate", single["rate"], "req/s", f"{RATE:g}"),
                    Result(
                        AREA, "errors", single["errors"], "requests", "0", single["errors"] == 0
                    ),
                ]
            many = measure(url, bodies, 4, SECONDS / 2)
            results += [
                Result(AREA, f"4 clients p50 ({label})", many["p50"], "ms"),
                Result(
                    AREA,
                    f"4 clients p99 ({label})",
                    many["p99"],
                    "ms",
                    f"<= {TARGET_P99_MS:g}",
                    many["p99"] <= TARGET_P99_MS,
                ),
            ]
        finally:
            process.terminate()
            process.wait(timeout=10)
    return results
