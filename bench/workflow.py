"""End to end: ``fraudops run --input`` on a generated file, every workflow and pipeline step.

Target (issue 15): 1.75M transactions from file to an approved, serving model
in <= 60 s on 2 cores, and the whole run's peak memory at 5M <= 6 GiB. The
input is generated first (``fraudops generate``, 90 days, the run's default
seed and malformed share) and not timed: the timed run is the one a user runs
on a 1.75M file. Reported: the time of each workflow step and of each
SageMaker pipeline step as the local executor recorded it, the training
step's own matrix/boosting seconds, test average precision, and the peak
resident memory of the run's whole process tree (the CLI, the step containers
and the endpoint it starts), sampled every 0.2 s, and the CPU seconds of all
the run's processes (the figure the machine's load does not move much).

Measured 2026-12-03 at 1.75M (90 days; 2 cores shared with other helpers'
test suites). Earlier, against 8fd9327 (Preprocess in Arrow, train.py without
scikit-learn, feature row checks on stage 1, two Parquet writer threads): at
load 1.3-1.5 75 / 60 s -> 57 / 57 s wall, test AP 0.675 before and after; every
run at load <= 2.2 after that: median 59 s (50-66 s).

Then, against f2baa7c, run alternately on one file at load 3.9-5.1 (other
helpers' suites on both cores; wall s / CPU s of all processes):

    f2baa7c            97.5 / 71.2, 115.1 / 82.3, 100.0 / 76.9   (median 100 / 77)
    after (e48a743)    81.1 / 67.6,  74.1 / 66.3,  94.6 / 74.3   (median 81 / 68)

Tune 24.3-26.2 s -> 11.5-15.5 s (one booster per trial updated in place, so
XGBoost's prediction caches serve every round and validation measurement with
the new trees only; profiled alone at load 3.5: 26.4 -> 14.5 s, predict 7.3 ->
1.8 s, update 10.0 -> 6.4 s), Evaluate 5.1-6.4 s -> 2.8-3.9 s (no scikit-learn
import), test AP 0.675 in all six runs; bench.quality at 400k (seeds 1-2): AP
0.597 -> 0.604 on our generator, 0.776 -> 0.776 on the handbook layout. The
definition is rendered in a background process while ingest and features run
(about 4.6 s of one core before); at nice 19 it only takes an idle core, so
under this load it often had not finished and the pipeline step still waited
for it (the step's time beyond its SageMaker steps 5.5-6.1 s before, 2.7-5.3 s
after). One pair at load 1.5-1.7 afterwards: 68.0 s (f2baa7c; the pipeline step
5.2 s beyond its SageMaker steps) against 64.4 s (0.1 s beyond: the render was
ready), Tune 20.1 -> 15.1 s, Evaluate 3.8 -> 3.0 s, but ingest 6.9 -> 8.9 s and
Train 11.5 -> 16.1 s (Train is unchanged code: noise of the shared cores). At
5M (load 1.7-3.1, before these changes): 135 s end to end, peak RSS of the
process tree 4.8 GB (goal <= 6 GB), test AP 0.633.

After the feature build's last cuts (82f1ce7..), otherwise idle machine: 1.75M
47.4 s end to end (load 1.7; ingest 5.6, features 3.1, pipeline 29.0 s of which
Preprocess 6.1, Tune 9.4, Train 11.4, Evaluate 2.1; CPU 61 s; test AP 0.675; peak
2.1 GB); 5M 112 s (load 3.2; features 10.9 s; peak RSS of the process tree 4.73 GB;
test AP 0.636).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench._harness import Result, TreeRssSampler

AREA = "workflow"
TARGET_SECONDS_AT_1_75M = 60.0
TARGET_PEAK_MB_AT_5M = 6 * 1024.0
MALFORMED_RATE = "0.001"  # what `fraudops run` generates by default


def _fraudops(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli.main", *args]


def run(size: int, workdir: Path) -> list[Result]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    days = 90 if size >= 200_000 else 35
    workspace, landing = workdir / "workspace", workdir / "input"
    started = time.perf_counter()
    subprocess.run(
        _fraudops("generate", "--workdir", str(workspace), "--transactions", str(size),
                  "--days", str(days), "--malformed-rate", MALFORMED_RATE,
                  "--output", str(landing)),
        capture_output=True, text=True, check=True,
    )
    generated = time.perf_counter() - started
    started, cpu_before = time.perf_counter(), _children_cpu()
    with subprocess.Popen(
        _fraudops("run", "--workdir", str(workspace), "--input", str(landing)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process, TreeRssSampler(process.pid) as memory:
        stdout, stderr = process.communicate()
    total, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if process.returncode != 0:
        raise RuntimeError(f"fraudops run failed:\n{stdout[-3000:]}{stderr}")
    results = [Result(AREA, "generate the input file (not timed below)", generated, "s")]
    results += [Result(AREA, f"workflow {name}", seconds, "s")
                for name, seconds in _workflow_steps(stdout)]
    results += [Result(AREA, f"pipeline step {name}", seconds, "s")
                for name, seconds in _pipeline_steps(workspace)]
    results += _model_figures(workspace)
    target = TARGET_SECONDS_AT_1_75M * size / 1_750_000
    counts = size >= 1_000_000  # fixed start-up costs dominate smaller runs
    results.append(Result(AREA, "end to end (fraudops run --input)", total, "s",
                          f"<= {target:.0f} s", total <= target if counts else None))
    # Every process the run waited for: wall time depends on what else the 2 cores run.
    results.append(Result(AREA, "CPU time of the run (all its processes)", cpu, "s"))
    results.append(Result(AREA, "machine load average", os.getloadavg()[0], "procs"))
    results.append(Result(AREA, "peak memory of the run's process tree", memory.peak_mb, "MiB",
                          f"<= {TARGET_PEAK_MB_AT_5M:.0f} at 5M",
                          memory.peak_mb <= TARGET_PEAK_MB_AT_5M if size >= 5_000_000 else None))
    _stop_endpoint(workspace)
    return results


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _workflow_steps(stdout: str) -> list[tuple[str, float]]:
    """Rows of the printed "workflow steps" table: step, status, attempts, seconds."""
    steps = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 4 and cells[1] == "Succeeded":
            steps.append((cells[0], float(cells[3])))
    return steps


def _pipeline_steps(workdir: Path) -> list[tuple[str, float]]:
    from pipelines.core.workspace import Workspace
    from pipelines.model.executor.store import ExecutionStore

    store = ExecutionStore(Workspace.open(workdir).executions)
    [execution] = store.list_pipeline_executions(limit=1)["PipelineExecutionSummaries"]
    execution_id = execution["PipelineExecutionId"]
    steps = store.list_pipeline_execution_steps(execution_id)["PipelineExecutionSteps"]
    return [
        (s["StepName"], (datetime.fromisoformat(s["EndTime"])
                         - datetime.fromisoformat(s["StartTime"])).total_seconds())
        for s in reversed(steps) if s["EndTime"]
    ]


def _newest(workdir: Path, pattern: str) -> dict:
    return json.loads(max(workdir.rglob(pattern), key=lambda p: p.stat().st_mtime).read_text())


def _model_figures(workdir: Path) -> list[Result]:
    """What the Train step spent (train.py's own account) and what it bought (test AP)."""
    metadata = _newest(workdir, "model/training_metadata.json")
    evaluation = _newest(workdir, "evaluation/evaluation.json")
    seconds = metadata.get("seconds", {})
    return [
        *(Result(AREA, f"train.py {part} (refit)", value, "s") for part, value in seconds.items()),
        Result(AREA, "boosting rounds (refit)", metadata["rounds_run"], "rounds"),
        Result(AREA, "test average precision",
               evaluation["binary_classification_metrics"]["average_precision"]["value"], ""),
    ]


def _stop_endpoint(workdir: Path) -> None:
    from pipelines.core.workspace import Workspace
    from pipelines.serving.deploy.local import read_endpoint_state, stop_endpoint_process

    state = read_endpoint_state(Workspace.open(workdir)) or {}
    if state.get("pid"):
        stop_endpoint_process(int(state["pid"]))
