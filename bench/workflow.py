"""End to end: every workflow step, and every pipeline step, at the given size.

Runs ``fraudops run`` (the main job) once in a fresh workspace and reports the
time of each workflow step and of each SageMaker pipeline step as the local
executor recorded it. Target (issue 3): the default 500k-transaction run in
<= 2 minutes on 2 cores; this reports whatever size is asked for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench._harness import Result

AREA = "workflow"
TARGET_SECONDS_AT_500K = 120.0


def run(size: int, workdir: Path) -> list[Result]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    days = 90 if size >= 200_000 else 35
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "run", "--workdir", str(workdir),
         "--transactions", str(size), "--days", str(days)],
        capture_output=True, text=True, check=False,
    )
    total = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"fraudops run failed:\n{completed.stdout[-3000:]}{completed.stderr}")
    results = [Result(AREA, f"workflow {name}", seconds, "s")
               for name, seconds in _workflow_steps(completed.stdout)]
    results += [Result(AREA, f"pipeline step {name}", seconds, "s")
                for name, seconds in _pipeline_steps(workdir)]
    target = TARGET_SECONDS_AT_500K * size / 500_000
    results.append(Result(AREA, "end to end (fraudops run)", total, "s",
                          f"<= {target:.0f} s", total <= target))
    _stop_endpoint(workdir)
    return results


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


def _stop_endpoint(workdir: Path) -> None:
    from pipelines.core.workspace import Workspace
    from pipelines.serving.deploy.local import read_endpoint_state, stop_endpoint_process

    state = read_endpoint_state(Workspace.open(workdir)) or {}
    if state.get("pid"):
        stop_endpoint_process(int(state["pid"]))
