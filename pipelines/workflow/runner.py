"""Run the declared workflow locally: order, retries, rollback, notification.

Every step's local implementation is a function ``(RunContext) -> result``
where the result is the step's own dataclass; later steps read it back by
type (``ctx.results.get(PipelineResult)``), never through a string key. A
step that still fails after its retries stops the run, has its failure sent
through the same failure-notification handler the Lambda runs on AWS, and
leaves earlier steps' outputs intact. A ``PermanentFailure`` (a configuration
error, a model the quality gate rejected) is never retried, whatever the
step's policy: the same input would fail the same way.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from rich.console import Console

from pipelines.core.failures import PermanentFailure
from pipelines.core.workspace import Workspace
from pipelines.workflow.declaration import Step, Workflow

ResultT = TypeVar("ResultT")
OptionsT = TypeVar("OptionsT")


class StepResults:
    """The typed results of the steps finished so far, each found by its type.

    One type per step, so ``get(IngestReport)`` names exactly one producer and
    returns it as that type.
    """

    def __init__(self) -> None:
        self._results: dict[type, object] = {}
        self._producers: dict[type, str] = {}

    def add(self, step: str, result: object) -> None:
        kind = type(result)
        if kind in self._producers:
            raise TypeError(
                f"steps {self._producers[kind]!r} and {step!r} both return {kind.__name__}: "
                "give each step its own result type"
            )
        self._results[kind] = result
        self._producers[kind] = step

    def get(self, kind: type[ResultT]) -> ResultT:
        """The result of type ``kind``; LookupError if no finished step produced one."""
        result = self._results.get(kind)
        if not isinstance(result, kind):
            finished = ", ".join(f"{step} ({k.__name__})" for k, step in self._producers.items())
            raise LookupError(
                f"no finished step produced a {kind.__name__} (finished: {finished or 'none'}); "
                "declare the step that does as a dependency"
            )
        return result


@dataclass
class RunContext(Generic[OptionsT]):
    """What every step sees: the workspace, the run options, earlier results."""

    workspace: Workspace
    options: OptionsT
    console: Console = field(default_factory=Console)
    results: StepResults = field(default_factory=StepResults)
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ"))


StepFunction = Callable[[RunContext[Any]], object]


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: str  # Succeeded | Failed | Skipped
    attempts: int
    seconds: float
    result: object | None  # the step's result dataclass; None unless it succeeded
    error: str = ""
    permanent: bool = False  # failed with a PermanentFailure: retrying could not help


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
        context.results.add(step.name, outcome.result)
    return outcomes


def _run_step(
    step: Step, function: StepFunction, context: RunContext, sleep: Callable[[float], None]
) -> StepOutcome:
    delays = step.retry.delays()
    start = time.perf_counter()
    error = ""
    for attempt in range(1, step.retry.max_attempts + 1):
        try:
            result = function(context)
        except PermanentFailure as exc:
            # Configuration errors and a rejected model: the same input fails the same way.
            context.console.print(f"[red]{step.name} failed (not retried):[/] {exc}")
            return StepOutcome(step.name, "Failed", attempt, time.perf_counter() - start, None,
                               str(exc), permanent=True)
        except Exception as exc:  # a step failure of any other kind is handled by policy
            error = f"{type(exc).__name__}: {exc}"
            context.console.print(f"[red]{step.name} attempt {attempt} failed:[/] {error}")
            context.console.print(traceback.format_exc(), style="dim", markup=False)
            if attempt <= len(delays):
                sleep(delays[attempt - 1])
            continue
        # A programming error, not a step failure: retrying would not change it.
        if not dataclasses.is_dataclass(result) or isinstance(result, type):
            raise TypeError(
                f"step {step.name!r} returned {type(result).__name__}: a step returns an "
                "instance of its result dataclass"
            )
        return StepOutcome(step.name, "Succeeded", attempt, time.perf_counter() - start, result)
    return StepOutcome(
        step.name, "Failed", step.retry.max_attempts, time.perf_counter() - start, None, error
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
