"""Endpoint latency: one transaction per request at a bounded 200 requests/s on loopback.

Target: p99 <= 10 ms. The server runs in its own process exactly as the
deployer starts it (``python -m pipelines.serving.endpoint.server``), hosting the
repository's ``inference.py`` with a model the size training produces (34
features, 400 rounds, depth 5). The client sends on a fixed schedule (open
loop) and measures each latency from the scheduled send time, so a slow
response delays and penalises the requests queued behind it.

Requests are JSON with named features (what the workflow and stream clients
send) and, as a second figure, headerless CSV. Also measured: 4 concurrent
clients (same total rate) with the predict lock and without it, to show what
serialising ``predict_fn`` costs.
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
from pipelines.core.code import unit_dir
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.serving.deploy.sample_model import synthetic_features, train_model_files

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
        "pipelines.serving.endpoint.server",
        "--model-dir",
        str(model_dir),
        "--code-dir",
        str(unit_dir("inference")),
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
    bodies: list[tuple[bytes, str]],
    rate: float,
    seconds: float,
    out: list[float],
    errors: list[int],
    offset: float = 0.0,
) -> None:
    """Open-loop sender on one keep-alive connection; latencies in ms into ``out``."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    count = int(rate * seconds)
    start = time.perf_counter() + offset
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body, content_type = bodies[i % len(bodies)]
        conn.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - scheduled) * 1000)
        if response.status != 200:
            errors.append(response.status)
    conn.close()


def measure(
    url: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    per_client = RATE / clients
    threads = [
        threading.Thread(
            target=client,
            args=(url, bodies, per_client, seconds, latencies, errors, i / RATE),
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


def request_bodies(rows: np.ndarray) -> dict[str, list[tuple[bytes, str]]]:
    """One transaction per request: JSON with named features (what clients send) and CSV."""
    names = list(FEATURE_COLUMNS)
    as_json = [
        (
            json.dumps({"instances": [dict(zip(names, map(float, row), strict=True))]}).encode(),
            "application/json",
        )
        for row in rows
    ]
    as_csv = [(",".join(f"{v:.6g}" for v in row).encode(), "text/csv") for row in rows]
    return {"json": as_json, "csv": as_csv}


def p99_result(name: str, figures: dict[str, float]) -> Result:
    ok = figures["p99"] <= TARGET_P99_MS and figures["errors"] == 0
    return Result(AREA, name, figures["p99"], "ms", f"<= {TARGET_P99_MS:g}", ok)


def run(size: int, workdir: Path) -> list[Result]:
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = train_model_files(
        workdir / "model", features=FEATURE_COLUMNS, rows=20_000, num_round=400, max_depth=5
    )
    rows = synthetic_features(500, FEATURE_COLUMNS, seed=1)[list(FEATURE_COLUMNS)].to_numpy()
    bodies = request_bodies(rows)
    results: list[Result] = []
    for lock in (True, False):
        process, url = start_server(model_dir, workdir, lock)
        label = "lock" if lock else "no lock"
        try:
            measure(url, bodies["json"], 1, 1.0)  # warm-up
            if lock:
                single = measure(url, bodies["json"], 1, SECONDS)
                results += [
                    Result(AREA, "JSON 1 client p50", single["p50"], "ms"),
                    p99_result("JSON 1 client p99", single),
                    Result(AREA, "JSON 1 client max", single["max"], "ms"),
                    Result(AREA, "JSON achieved rate", single["rate"], "req/s", f"{RATE:g}"),
                    Result(
                        AREA, "errors", single["errors"], "requests", "0", single["errors"] == 0
                    ),
                ]
                as_csv = measure(url, bodies["csv"], 1, SECONDS / 2)
                results += [
                    Result(AREA, "CSV 1 client p50", as_csv["p50"], "ms"),
                    p99_result("CSV 1 client p99", as_csv),
                ]
            many = measure(url, bodies["json"], 4, SECONDS / 2)
            results += [
                Result(AREA, f"JSON 4 clients p50 ({label})", many["p50"], "ms"),
                p99_result(f"JSON 4 clients p99 ({label})", many),
            ]
        finally:
            process.terminate()
            process.wait(timeout=10)
    return results
