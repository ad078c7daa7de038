"""Local implementations of the declared workflow's steps.

Each function takes the run's :class:`RunContext` and returns the step's typed
result: the unit's own result where it has one (the ingest report, the feature
build summary, the score-and-alert outcome), otherwise a small frozen
dataclass defined here. Later steps and the final summary read results back by
type. The steps call the same units the CLI commands call; the workflow adds
only order, retries and failure handling.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.compliance import vault
from pipelines.core.failures import ConfigurationError, ModelRejected
from pipelines.core.identity import current_actor
from pipelines.core.params import ParameterError
from pipelines.core.schema import PARTITION_COLUMN
from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops
from pipelines.data.features.build import FeatureBuildSummary, build_feature_table
from pipelines.data.features.store import MANIFEST_NAME
from pipelines.data.ingest.columns import load_column_map
from pipelines.data.ingest.errors import IngestError
from pipelines.data.ingest.reconcile import IngestReport, render
from pipelines.data.ingest.run import ingest as run_ingest
from pipelines.fraud.local_run import (
    EvaluationMetrics,
    read_evaluation,
    registered_model_package_arn,
    run_pipeline_locally,
)
from pipelines.model.executor.errors import ExecutorError
from pipelines.model.registry import DEMO_NOTICE, LocalModelRegistry
from pipelines.serving.deploy.local import read_endpoint_state
from pipelines.serving.deploy.selection import SelectionError
from pipelines.serving.score_and_alert import ScoredAndAlerted, latest_feature_day, score_and_alert
from pipelines.serving.scoring.batch import ScoringError
from pipelines.workflow.runner import RunContext, StepFunction


@dataclass(frozen=True)
class RunOptions:
    """What ``fraudops run`` was asked to do; the command line decides every value."""

    input_path: Path | None  # the user's own landing data (then nothing is generated)
    column_map: Path | None
    transactions: int
    days: int
    seed: int
    start_date: dt.date
    malformed_rate: float
    engine: str
    label_delay_days: int
    approver: str  # display name recorded beside your account on the demo approval
    webhook_url: str | None
    # SageMaker pipeline parameters by their declared names; None keeps the default.
    pipeline_parameters: Mapping[str, Any]
    # Numeric times in the user's data count from this instant (None: epoch seconds)...
    time_origin: dt.datetime | None = None
    # ...in this unit (``columns.TIME_UNITS``; None: the column map's, else seconds).
    time_unit: str | None = None
    # get_pipeline() arguments (the model-selection budget); {} keeps the defaults.
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)


FraudRunContext = RunContext[RunOptions]


@dataclass(frozen=True)
class GenerateResult:
    landing: Path
    transactions: int = 0
    files: int = 0
    malformed: int = 0
    skipped: str = ""  # why nothing was generated


@dataclass(frozen=True)
class PipelineResult:
    execution_id: str
    model_package_arn: str
    evaluation: EvaluationMetrics


@dataclass(frozen=True)
class ApproveResult:
    model_package_arn: str
    approver: str
    deploy_deliveries: int
    deploy_failures: int


@dataclass(frozen=True)
class DeployResult:
    url: str
    version: int
    answered: str  # the start of the endpoint's answer to one real request


@dataclass(frozen=True)
class BackupSummary:
    vault: Path
    snapshot: str  # the snapshot id, or "not due"
    files: int = 0
    bytes_written: int = 0


def generate(ctx: FraudRunContext) -> GenerateResult:
    """Synthetic landing drops, unless the user brought their own input."""
    options = ctx.options
    if options.input_path is not None:
        return GenerateResult(options.input_path, skipped=f"using your data: {options.input_path}")
    config = GeneratorConfig(
        transactions=options.transactions,
        days=options.days,
        seed=options.seed,
        start_date=options.start_date,
    )
    with ctx.console.status(f"generating {config.transactions:,} transactions"):
        table = generate_transactions(config)
        drops = write_landing_drops(
            table, ctx.workspace.landing, malformed_rate=options.malformed_rate, seed=config.seed,
        )
    return GenerateResult(ctx.workspace.landing, table.num_rows, len(drops),
                          drops.malformed_total)


@contextmanager
def configuration_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise ``kinds`` as a ConfigurationError: the input or its configuration is
    wrong, so the workflow fails the step at once instead of retrying it."""
    try:
        yield
    except kinds as exc:
        raise ConfigurationError(str(exc)) from exc


def ingest(ctx: FraudRunContext) -> IngestReport:
    options = ctx.options
    with configuration_errors(IngestError, ParameterError):
        column_map = load_column_map(options.column_map) if options.column_map else None
        paths = [options.input_path] if options.input_path else None
        report = run_ingest(ctx.workspace, paths, column_map=column_map,
                            time_origin=options.time_origin, time_unit=options.time_unit)
    render(report, ctx.console)
    return report


def features(ctx: FraudRunContext) -> FeatureBuildSummary:
    # ValueError: a check on the curated data failed (it names the rows); FileNotFoundError:
    # nothing was curated.
    with configuration_errors(ValueError, FileNotFoundError):
        return build_feature_table(
            ctx.workspace, label_delay_days=ctx.options.label_delay_days,
            engine=ctx.options.engine,
        )


def pipeline(ctx: FraudRunContext) -> PipelineResult:
    with configuration_errors(ExecutorError):
        run = run_pipeline_locally(ctx.workspace, ctx.options.pipeline_parameters,
                                   pipeline_kwargs=ctx.options.pipeline_kwargs)
    if not run.succeeded:
        failure = run.failure(ctx.workspace)
        if failure.rejection is not None:
            raise ModelRejected(failure.message)
        if not failure.retryable:
            raise ConfigurationError(failure.message)
        raise RuntimeError(failure.message)
    return PipelineResult(
        run.execution.execution_id,
        registered_model_package_arn(run.execution),
        read_evaluation(ctx.workspace, run.execution),
    )


def approve(ctx: FraudRunContext) -> ApproveResult:
    """A demo approval by your own account (recorded and shown as such); the event deploys.

    One person runs the whole flow here, so this is not four-eyes: the registry
    records the decision as kind ``demo`` with ``options.approver`` as its display name.
    """
    trained = ctx.results.get(PipelineResult)
    registry = LocalModelRegistry.for_workspace(ctx.workspace)
    actor = current_actor(ctx.options.approver)
    decision = registry.demo_approve(
        trained.model_package_arn, actor.account,
        f"demo approval by fraudops run: AP {trained.evaluation.average_precision:.3f} "
        f"passed the quality gate", actor.display,
    )
    failed = [d for d in decision["Deliveries"] if not d.ok]
    return ApproveResult(trained.model_package_arn, f"{actor.label}: {DEMO_NOTICE}",
                         len(decision["Deliveries"]), len(failed))


def deploy(ctx: FraudRunContext) -> DeployResult:
    """Approval already deployed through the event bus; confirm the endpoint answers."""
    state = read_endpoint_state(ctx.workspace)
    arn = ctx.results.get(ApproveResult).model_package_arn
    if not state or state.get("model_package_arn") != arn:
        raise RuntimeError(
            f"the approved model {arn} is not serving (endpoint state: {state}); "
            f"see {ctx.workspace.logs} and `fraudops model show`"
        )
    return DeployResult(state["url"], int(state["version"]), _invoke_sample(state["url"], ctx))


def _invoke_sample(url: str, ctx: FraudRunContext) -> str:
    """One real request to the endpoint with the latest day's first feature row."""
    feature_set = json.loads((ctx.workspace.features / MANIFEST_NAME).read_text())
    latest = ctx.workspace.features / f"{PARTITION_COLUMN}={latest_feature_day(ctx.workspace)}"
    row = pq.read_table(next(latest.glob("*.parquet")),
                        columns=feature_set["feature_columns"]).slice(0, 1).to_pylist()[0]
    body = json.dumps({"instances": [row]}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()[:200]


def score(ctx: FraudRunContext) -> ScoredAndAlerted:
    """Batch-score the latest day and raise alerts from its scores (as `fraudops score`)."""
    with configuration_errors(ScoringError, SelectionError):
        return score_and_alert(ctx.workspace, day=latest_feature_day(ctx.workspace),
                               webhook_url=ctx.options.webhook_url)


def backup(ctx: FraudRunContext) -> BackupSummary:
    result = vault.run_if_due(ctx.workspace)
    if result is None:
        return BackupSummary(ctx.workspace.vault, "not due")
    return BackupSummary(ctx.workspace.vault, result.snapshot.snapshot_id, result.files,
                         result.bytes_written)


IMPLEMENTATIONS: dict[str, StepFunction] = {
    "generate": generate,
    "ingest": ingest,
    "features": features,
    "pipeline": pipeline,
    "approve": approve,
    "deploy": deploy,
    "score": score,
    "backup": backup,
}
