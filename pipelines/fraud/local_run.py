"""Run the fraud pipeline on this machine: render (cached), execute locally, return the outcome.

``fraudops run``'s pipeline step and ``run-pipeline --backend local`` both call
:func:`run_pipeline_locally`, so they stage the same code, run the same
definition with the same executor and record the same identity. Reading what
the execution produced (the registered model, the evaluation) is here too,
next to the pipeline that names those steps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.identity import current_user
from pipelines.core.workspace import Workspace
from pipelines.fraud.definition import (
    DEFAULT_MODULE,
    RenderedPipeline,
    render_in_background,
    render_pipeline_cached,
)
from pipelines.model.executor import ExecutionSummary, run_pipeline_definition
from pipelines.model.executor.errors import CLIENT_ERROR, RETRYABLE_EXCEPTION_TYPES
from pipelines.model.executor.runner import summarize
from pipelines.model.executor.store import FAILED, ExecutionStore

# Step names in pipeline.py.
EVALUATE_STEP, REGISTER_STEP, GATE_FAIL_STEP = "Evaluate", "Register", "QualityGateFailed"
SCORES_FILE = "test_scores.parquet"  # processing/evaluate.py writes it beside evaluation.json
QUALITY_PARAMETER, QUALITY_FLAG = "QualityThresholdAP", "--quality-threshold"
# What the container scripts print before exiting with code 2 (a user-fixable problem).
_SCRIPT_ERROR = re.compile(r"^(?:preprocess|train|evaluate): error: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Rejection:
    """The quality gate's verdict on an execution's model: the metric below the bar."""

    execution_id: str
    metric: str
    value: float
    threshold: float

    def line(self) -> str:
        return (f"model rejected by the quality gate: test {self.metric} {self.value:.3f} is "
                f"below the threshold {self.threshold:.3f} ({QUALITY_PARAMETER}); nothing was "
                f"registered. To accept it, run again with {QUALITY_FLAG} "
                f"{_floor(self.value):.3f} or lower")


@dataclass(frozen=True)
class PipelineFailure:
    """Why a pipeline execution failed, in one line; ``retryable`` when a resume may help."""

    message: str
    retryable: bool
    rejection: Rejection | None = None


@dataclass(frozen=True)
class LocalPipelineRun:
    """One local execution of a rendered pipeline."""

    pipeline: RenderedPipeline
    execution: ExecutionSummary
    logs: Path  # the execution's records and step logs in the workspace

    @property
    def succeeded(self) -> bool:
        return self.execution.succeeded

    def failure(self, workspace: Workspace) -> PipelineFailure:
        """Why the execution failed, in one line, and whether running it again may help."""
        return explain_failure(workspace, self.execution, self.logs)


@dataclass(frozen=True)
class EvaluationMetrics:
    """The headline numbers of the Evaluate step's evaluation.json.

    ``card_precision_at_k`` is None without card ids; ``card_precision_known_removed``
    leaves out the cards already known to be compromised each day (None if not computed).
    """

    average_precision: float
    roc_auc: float
    card_precision_at_k: float | None
    k: int
    precision_at_threshold: float
    recall_at_threshold: float
    path: Path
    card_precision_known_removed: float | None = None
    split: dict[str, Any] = field(default_factory=dict)  # windows, method, gap, note
    tuning: dict[str, Any] = field(default_factory=dict)  # the chosen hyperparameters

    @property
    def scores_path(self) -> Path:
        """The per-transaction test scores written beside evaluation.json."""
        return self.path.parent / SCORES_FILE


def run_pipeline_locally(
    workspace: Workspace,
    parameters: Mapping[str, Any],
    *,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    module_name: str = DEFAULT_MODULE,
    progress: bool = True,
    on_rendered: Callable[[RenderedPipeline], None] | None = None,
) -> LocalPipelineRun:
    """Render ``module_name`` into the workspace (reusing a cached render) and execute it.

    ``parameters`` whose value is ``None`` are left out, so the definition's
    default applies. The execution is started by :func:`current_user`;
    ``on_rendered`` is told once the code is staged, before anything runs.
    Raises ``pipelines.model.executor.ExecutorError`` for a definition the
    executor cannot run or parameters it does not declare; a failing step
    does not raise: the returned run says so.
    """
    rendered = render_pipeline_cached(
        dict(pipeline_kwargs or {}), code_store_dir=workspace.object_store,
        module_name=module_name, cache_dir=_definitions(workspace),
    )
    if on_rendered is not None:
        on_rendered(rendered)
    given = {name: value for name, value in parameters.items() if value is not None}
    execution = run_pipeline_definition(
        rendered.definition, workspace, given, current_user(), rendered.name, progress
    )
    return LocalPipelineRun(rendered, execution, workspace.executions / execution.execution_id)


def _definitions(workspace: Workspace) -> Path:
    """The workspace's render cache."""
    return workspace.state_dir / "definitions"


def render_ahead(
    workspace: Workspace, pipeline_kwargs: Mapping[str, Any] | None = None
) -> AbstractContextManager[None]:
    """Render the default pipeline in the background while the block runs.

    ``run_pipeline_locally`` with the same ``pipeline_kwargs`` inside the block
    waits for that render and reuses it (see ``render_in_background``).
    """
    return render_in_background(dict(pipeline_kwargs or {}),
                                code_store_dir=workspace.object_store,
                                cache_dir=_definitions(workspace))


def registered_model_package_arn(execution: ExecutionSummary) -> str:
    """The model package the Register step created ("" if it recorded none)."""
    return str(execution.step(REGISTER_STEP).properties.get("ModelPackageArn", ""))


def read_evaluation(workspace: Workspace, execution: ExecutionSummary) -> EvaluationMetrics:
    """The Evaluate step's evaluation.json, read from the workspace's object store."""
    outputs = execution.step(EVALUATE_STEP).properties["ProcessingOutputConfig"]["Outputs"]
    uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "evaluation")
    path = workspace.local_path(uri.rstrip("/") + "/evaluation.json")
    report = json.loads(path.read_text(encoding="utf-8"))
    metrics = report["binary_classification_metrics"]
    known = metrics.get("card_precision_at_k_known_removed") or {}
    return EvaluationMetrics(
        average_precision=metrics["average_precision"]["value"],
        roc_auc=metrics["roc_auc"]["value"],
        card_precision_at_k=metrics["card_precision_at_k"]["value"],
        k=metrics["card_precision_at_k"]["k"],
        precision_at_threshold=metrics["precision_at_threshold"]["value"],
        recall_at_threshold=metrics["recall_at_threshold"]["value"],
        path=path,
        card_precision_known_removed=known.get("value"),
        split=report.get("split") or {},
        tuning=(report.get("model") or {}).get("tuning") or {},
    )


def _floor(value: float) -> float:
    """``value`` rounded down to the three decimals shown, so the suggested flag passes."""
    return math.floor(value * 1000) / 1000


def rejection_of(workspace: Workspace, execution: ExecutionSummary) -> Rejection | None:
    """The quality gate's rejection if this execution ended at its Fail step, else None."""
    try:
        gate = execution.step(GATE_FAIL_STEP)
    except KeyError:
        return None
    if gate.status != FAILED:
        return None
    evaluation = read_evaluation(workspace, execution)
    store = ExecutionStore(workspace.executions)
    try:
        parameters = json.loads(store.execution_row(execution.execution_id)["parameters"])
    finally:
        store.close()
    return Rejection(execution.execution_id, "average precision",
                     evaluation.average_precision, float(parameters[QUALITY_PARAMETER]))


def explain_failure(
    workspace: Workspace, execution: ExecutionSummary, logs: Path
) -> PipelineFailure:
    """One line for a failed execution: the gate's verdict, the script's own error
    message (a problem with the data or parameters), or the step's failure with
    where to look; only failures SageMaker would retry say that a resume may help."""
    rejection = rejection_of(workspace, execution)
    if rejection is not None:
        return PipelineFailure(rejection.line(), retryable=False, rejection=rejection)
    failed = [step for step in execution.steps if step.status == FAILED]
    step = failed[-1] if failed else None
    reason = (step.failure_reason if step else None) or execution.failure_reason or "unknown"
    where = f"pipeline execution {execution.execution_id} failed at {step.name if step else '?'}"
    log = Path(step.log_path) if step and step.log_path else None
    script_errors = _SCRIPT_ERROR.findall(log.read_text(errors="replace")) if (
        log and log.is_file()) else []
    if script_errors:
        return PipelineFailure(f"{where}: {script_errors[-1]} (log: {log})", retryable=False)
    first_line = reason.splitlines()[0]
    if reason.startswith(tuple(RETRYABLE_EXCEPTION_TYPES)):
        return PipelineFailure(
            f"{where}: {first_line} (logs: {logs}; `fraudops pipeline resume "
            f"{execution.execution_id}` retries it)", retryable=True)
    permanent = reason.startswith(CLIENT_ERROR)
    return PipelineFailure(f"{where}: {first_line} (logs: {log or logs})",
                           retryable=not permanent)


def last_rejection(
    workspace: Workspace, pipeline_name: str = "fraud-detection"
) -> Rejection | None:
    """The rejection of the most recent execution of ``pipeline_name``, if it was rejected.

    ``fraudops model list`` and ``fraudops score`` say so, rather than only
    "nothing registered" or "nothing deployed".
    """
    if not workspace.executions.is_dir():
        return None  # nothing ever ran; opening the store would create it
    store = ExecutionStore(workspace.executions)
    try:
        latest = store.list_pipeline_executions(pipeline_name, limit=1)
        summaries = latest["PipelineExecutionSummaries"]
        if not summaries or summaries[0]["PipelineExecutionStatus"] != FAILED:
            return None
        execution = summarize(store, summaries[0]["PipelineExecutionId"])
    finally:
        store.close()
    return rejection_of(workspace, execution)
