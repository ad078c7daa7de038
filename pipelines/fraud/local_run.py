"""Run the fraud pipeline on this machine: render (cached), execute locally, return the outcome.

``fraudops run``'s pipeline step and ``run-pipeline --backend local`` both call
:func:`run_pipeline_locally`, so they stage the same code, run the same
definition with the same executor and record the same identity. Reading what
the execution produced (the registered model, the evaluation) is here too,
next to the pipeline that names those steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.identity import current_user
from pipelines.core.workspace import Workspace
from pipelines.fraud.definition import DEFAULT_MODULE, RenderedPipeline, render_pipeline_cached
from pipelines.model.executor import ExecutionSummary, run_pipeline_definition

EVALUATE_STEP, REGISTER_STEP = "Evaluate", "Register"  # step names in pipeline.py


@dataclass(frozen=True)
class LocalPipelineRun:
    """One local execution of a rendered pipeline."""

    pipeline: RenderedPipeline
    execution: ExecutionSummary
    logs: Path  # the execution's records and step logs in the workspace

    @property
    def succeeded(self) -> bool:
        return self.execution.succeeded

    def failure(self) -> str:
        """One line saying how the execution ended and where to look (for errors)."""
        return (f"pipeline execution {self.execution.execution_id} {self.execution.status}: "
                f"{self.execution.failure_reason} (logs: {self.logs}; "
                f"`fraudops pipeline resume` retries)")


@dataclass(frozen=True)
class EvaluationMetrics:
    """The headline numbers of the Evaluate step's evaluation.json."""

    average_precision: float
    roc_auc: float
    card_precision_at_k: float
    k: int
    precision_at_threshold: float
    recall_at_threshold: float
    path: Path


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
        module_name=module_name, cache_dir=workspace.state_dir / "definitions",
    )
    if on_rendered is not None:
        on_rendered(rendered)
    given = {name: value for name, value in parameters.items() if value is not None}
    execution = run_pipeline_definition(
        rendered.definition, workspace, given, current_user(), rendered.name, progress
    )
    return LocalPipelineRun(rendered, execution, workspace.executions / execution.execution_id)


def registered_model_package_arn(execution: ExecutionSummary) -> str:
    """The model package the Register step created ("" if it recorded none)."""
    return str(execution.step(REGISTER_STEP).properties.get("ModelPackageArn", ""))


def read_evaluation(workspace: Workspace, execution: ExecutionSummary) -> EvaluationMetrics:
    """The Evaluate step's evaluation.json, read from the workspace's object store."""
    outputs = execution.step(EVALUATE_STEP).properties["ProcessingOutputConfig"]["Outputs"]
    uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "evaluation")
    path = workspace.local_path(uri.rstrip("/") + "/evaluation.json")
    metrics = json.loads(path.read_text(encoding="utf-8"))["binary_classification_metrics"]
    return EvaluationMetrics(
        average_precision=metrics["average_precision"]["value"],
        roc_auc=metrics["roc_auc"]["value"],
        card_precision_at_k=metrics["card_precision_at_k"]["value"],
        k=metrics["card_precision_at_k"]["k"],
        precision_at_threshold=metrics["precision_at_threshold"]["value"],
        recall_at_threshold=metrics["recall_at_threshold"]["value"],
        path=path,
    )
