"""Run the declared workflow locally: order, retries, rollback, notification.

Every step's local implementation is a function ``(RunContext) -> dict``
returning a small summary. A step that still fails after its retries stops
the run, has its failure sent through the same failure-notification handler
the Lambda runs on AWS, and leaves earlier steps' outputs intact.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from pipelines.core.workspace import Workspace
from pipelines.workflow.declaration import Step, Workflow

StepFunction = Callable[["RunContext"], dict[str, Any]]


@dataclass
class RunContext:
    """What every step sees: the workspace, the run options, earlier results."""

    workspace: Workspace
    options: Mapping[str, Any]
    console: Console = field(default_factory=Console)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ"))


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: str  # Succeeded | Failed | Skipped
    attempts: int
    seconds: float
    summary: dict[str, Any]
    error: str = ""


class WorkflowFailed(RuntimeError):
    """A step failed after its retries; ``outcomes`` holds every step so far."""

    def __init__(self, step: str, error: str, outcomes: list[StepOutcome]) -> None:
        super().__init__(f"step {step!r} failed: {error}")
        self.step = step
        self.outcomes = outcomes


def run_workflow(
    workflow: Workflow,
    implementations: Mapping[str, StepFunction],
    context: RunContext,
    *,
    notify_failure: Callable[[dict[str, Any]], object] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StepOutcome]:
    """Execute ``workflow`` in dependency order; raise :class:`WorkflowFailed` on failure."""
    missing = [s.name for s in workflow.steps if s.name not in implementations]
    if missing:
        raise ValueError(f"no local implementation for workflow steps: {', '.join(missing)}")
    outcomes: list[StepOutcome] = []
    ordered = workflow.order()
    for index, step in enumerate(ordered, start=1):
        context.console.rule(f"[bold]{index}/{len(ordered)} {step.name}[/]  {step.description}")
        outcome = _run_step(step, implementations[step.name], context, sleep)
        outcomes.append(outcome)
        if outcome.status == "Failed":
            if notify_failure is not None:
                notify_failure(_failure_event(workflow, step, outcome, context))
            raise WorkflowFailed(step.name, outcome.error, outcomes)
        context.results[step.name] = outcome.summary
    return outcomes


def _run_step(
    step: Step, function: StepFunction, context: RunContext, sleep: Callable[[float], None]
) -> StepOutcome:
    delays = step.retry.delays()
    start = time.perf_counter()
    error = ""
    for attempt in range(1, step.retry.max_attempts + 1):
        try:
            summary = function(context)
        except Exception as exc:  # a step failure of any kind is handled by policy
            error = f"{type(exc).__name__}: {exc}"
            context.console.print(f"[red]{step.name} attempt {attempt} failed:[/] {error}")
            context.console.print(traceback.format_exc(), style="dim", markup=False)
            if attempt <= len(delays):
                sleep(delays[attempt - 1])
            continue
        return StepOutcome(step.name, "Succeeded", attempt, time.perf_counter() - start, summary)
    return StepOutcome(
        step.name, "Failed", step.retry.max_attempts, time.perf_counter() - start, {}, error
    )


def _failure_event(
    workflow: Workflow, step: Step, outcome: StepOutcome, context: RunContext
) -> dict[str, Any]:
    """An EventBridge-shaped event, as Step Functions emits for a failed execution."""
    return {
        "source": "fraudops.workflow",
        "detail-type": "Workflow Step Failed",
        "time": datetime.now(UTC).isoformat(),
        "detail": {
            "workflow": workflow.name,
            "execution": context.run_id,
            "step": step.name,
            "attempts": outcome.attempts,
            "error": outcome.error,
            "rollback": step.rollback,
            "log": str(context.workspace.logs / f"{context.run_id}.log"),
        },
    }
