"""Execute a SageMaker pipeline definition locally, step by step, and record it.

``run_pipeline_definition`` is what ``run-pipeline --backend local`` calls;
``resume_pipeline_execution`` re-runs a failed or stopped execution from its
failed step(s), reusing every step that already succeeded (SageMaker's
RetryPipelineExecution).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pipelines.core.workspace import Workspace
from pipelines.model.executor import containers, objects, tuning
from pipelines.model.executor.definition import PipelineDefinition, StepDef, parse_definition
from pipelines.model.executor.errors import (
    CLIENT_ERROR,
    FAIL_STEP,
    SERVICE_FAULT,
    ExecutorError,
    ParameterError,
    StepFailure,
)
from pipelines.model.executor.expressions import (
    ResolutionContext,
    evaluate_conditions,
    format_value,
    resolve,
)
from pipelines.model.executor.policies import parse_duration, retry_delay
from pipelines.model.executor.progress import make_progress
from pipelines.model.executor.status_events import StatusPublisher
from pipelines.model.executor.store import (
    ARN_PREFIX,
    EXECUTING,
    FAILED,
    STOPPED,
    SUCCEEDED,
    ExecutionStore,
    execution_arn,
    now_iso,
    pipeline_arn,
)
from pipelines.model.executor.validate import check_supported

# The request attributes SageMaker compares to decide a cache hit ("Default cache key
# attributes by pipeline step type" in the SageMaker developer guide).
CACHE_KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": (
        "AlgorithmSpecification",
        "CheckpointConfig",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "Environment",
        "HyperParameters",
        "InputDataConfig",
    ),
    "Tuning": ("HyperParameterTuningJobConfig", "TrainingJobDefinition"),
}
# Steps that run a program in a job and keep its log.
JOB_STEPS = ("Processing", "Training", "Tuning")


class ModelRegistry(Protocol):
    """What a RegisterModel step needs (``pipelines.model.registry.LocalModelRegistry``)."""

    def create_model_package(self, request: dict[str, Any], created_by: str) -> Any:
        """CreateModelPackage; returns ``{"ModelPackageArn": ...}`` (or the ARN)."""


@dataclass(frozen=True)
class StepSummary:
    """One step of a finished execution."""

    name: str
    type: str
    status: str
    attempts: int
    cache_hit: bool
    failure_reason: str | None
    log_path: str | None
    metadata: dict[str, Any]
    properties: dict[str, Any]
    inputs: dict[str, Any] | None = None  # the step's arguments with expressions resolved


@dataclass(frozen=True)
class ExecutionSummary:
    """The outcome of ``run_pipeline_definition`` / ``resume_pipeline_execution``."""

    execution_id: str
    execution_arn: str
    pipeline_name: str
    status: str
    failure_reason: str | None
    start_time: str
    end_time: str | None
    steps: list[StepSummary] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """True when the execution ended Succeeded."""
        return self.status == SUCCEEDED

    def step(self, name: str) -> StepSummary:
        """The summary of step ``name``; KeyError if it did not run."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"step {name!r} did not run in execution {self.execution_id}")


def run_pipeline_definition(
    definition: str,
    workspace: Workspace,
    parameters: dict[str, Any],
    started_by: str,
    pipeline_name: str,
    progress: bool = True,
    *,
    registry: ModelRegistry | None = None,
) -> ExecutionSummary:
    """Run ``definition`` (SageMaker pipeline definition JSON) in ``workspace``.

    Validates the whole definition first (an unsupported step type or
    expression raises ``UnsupportedFeatureError`` before anything runs), then
    runs the steps in dependency order, recording the execution under
    ``workspace.executions``. A failing step fails the execution; the
    returned summary says why. ``registry`` defaults to the workspace's
    ``LocalModelRegistry``.
    """
    parsed = parse_definition(definition)
    check_supported(parsed)
    resolved_parameters = resolve_parameters(parsed, parameters or {})
    store = ExecutionStore(workspace.executions)
    execution_id = secrets.token_hex(6)
    start_time = now_iso()
    store.create_execution(
        execution_id, pipeline_name, started_by, resolved_parameters, definition, start_time
    )
    runner = _Runner(
        workspace,
        store,
        parsed,
        execution_id,
        pipeline_name,
        started_by,
        resolved_parameters,
        start_time,
        registry,
        progress,
    )
    try:
        return runner.run(previous={})
    finally:
        store.close()


def resume_pipeline_execution(
    execution_id: str,
    workspace: Workspace,
    progress: bool = True,
    *,
    registry: ModelRegistry | None = None,
) -> ExecutionSummary:
    """Re-run a failed or stopped execution: succeeded steps are reused, the rest run."""
    store = ExecutionStore(workspace.executions)
    row = store.execution_row(execution_id)
    if row["status"] not in (FAILED, STOPPED):
        store.close()
        raise ExecutorError(
            f"execution {execution_id} is {row['status']}; only Failed or Stopped executions "
            "can be resumed"
        )
    parsed = parse_definition(row["definition"])
    check_supported(parsed)
    previous = {
        s["step_name"]: s for s in store.step_rows(execution_id) if s["status"] == SUCCEEDED
    }
    store.reopen_execution(execution_id)
    runner = _Runner(
        workspace,
        store,
        parsed,
        execution_id,
        row["pipeline_name"],
        row["started_by"],
        json.loads(row["parameters"]),
        row["start_time"],
        registry,
        progress,
    )
    try:
        return runner.run(previous=previous, previous_status=row["status"])
    finally:
        store.close()


resume = resume_pipeline_execution


def resolve_parameters(definition: PipelineDefinition, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each coerced to its declared Type."""
    declared = {p.name: p for p in definition.parameters}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ParameterError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; this pipeline declares: "
            f"{', '.join(declared) or 'none'}"
        )
    values = {}
    for name, param in declared.items():
        if name in given:
            values[name] = _coerce_parameter(name, param.type, given[name])
        elif param.has_default:
            values[name] = _coerce_parameter(name, param.type, param.default)
        else:
            raise ParameterError(f"pipeline parameter {name} has no default; give a value for it")
    return values


class _Runner:
    """State of one execution while its steps run."""

    def __init__(
        self,
        workspace: Workspace,
        store: ExecutionStore,
        definition: PipelineDefinition,
        execution_id: str,
        pipeline_name: str,
        started_by: str,
        parameters: dict[str, Any],
        start_time: str,
        registry: ModelRegistry | None,
        progress: bool,
    ) -> None:
        self.workspace = workspace
        self.store = store
        self.definition = definition
        self.execution_id = execution_id
        self.pipeline_name = pipeline_name
        self.started_by = started_by
        self.registry = registry
        self.progress = make_progress(progress, pipeline_name, execution_id)
        self.directory = workspace.executions / execution_id
        self.start_time = start_time
        self.events = StatusPublisher(workspace, pipeline_name, execution_id)
        self.ctx = ResolutionContext(
            definition=definition,
            parameters=parameters,
            execution={
                "PipelineExecutionId": execution_id,
                "PipelineExecutionArn": execution_arn(pipeline_name, execution_id),
                "PipelineName": pipeline_name,
                "PipelineArn": pipeline_arn(pipeline_name),
                "StartDateTime": start_time,
            },
            read_json=lambda uri: objects.read_json_object(workspace, uri),
        )
        self.outcomes: dict[str, bool] = {}
        self.cleanups: list[threading.Thread] = []

    # --- the execution -------------------------------------------------------------
    def run(
        self, previous: dict[str, dict[str, Any]], previous_status: str | None = None
    ) -> ExecutionSummary:
        """Run (or resume) the execution's steps in order; record and return the outcome."""
        failure: str | None = None
        executed: set[str] = set()
        current: str | None = None
        self.events.execution(previous_status, EXECUTING, self.start_time)
        with self.progress, self._joining_cleanups():
            try:
                for name in self.definition.order:
                    step = self.definition.steps[name]
                    if not self._should_run(step, executed):
                        continue
                    current = name
                    if name in previous:
                        self._reuse(step, previous[name])
                    else:
                        failure = self._run_step(step)
                    current = None
                    if failure is not None:
                        break
                    executed.add(name)
            except KeyboardInterrupt:
                self._stop(current)
                self._audit(STOPPED, resumed=bool(previous))
                raise
            except Exception as exc:
                # An executor bug must not leave the execution looking as if it still runs.
                reason = f"local executor error in step {current}: {exc!r}"
                if current is not None:
                    self.store.update_step(
                        self.execution_id,
                        current,
                        status=FAILED,
                        end_time=now_iso(),
                        failure_reason=reason,
                    )
                self.store.finish_execution(self.execution_id, FAILED, reason)
                raise
        status = FAILED if failure is not None else SUCCEEDED
        self.store.finish_execution(self.execution_id, status, failure)
        self.events.execution(EXECUTING, status, self.start_time)
        self._audit(status, resumed=bool(previous))
        return summarize(self.store, self.execution_id)

    @contextmanager
    def _joining_cleanups(self) -> Iterator[None]:
        """Wait for scratch deletions when the execution ends, however it ends."""
        try:
            yield
        finally:
            for cleanup in self.cleanups:
                cleanup.join()

    def _audit(self, status: str, resumed: bool) -> None:
        """One ``pipeline.execution`` entry in the workspace audit trail per run or resume.

        Step statuses and parameters only: failure reasons carry log tails,
        which do not belong in a tamper-evident compliance record.
        """
        from pipelines.compliance.audit import record
        from pipelines.compliance.carddata import CardDataError

        details = {
            "pipeline": self.pipeline_name,
            "execution_id": self.execution_id,
            "status": status,
            "resumed": resumed,
            "steps": {s["step_name"]: s["status"] for s in self.store.step_rows(self.execution_id)},
            "parameters": self.ctx.parameters,
        }
        subject = execution_arn(self.pipeline_name, self.execution_id)
        try:
            record(self.workspace, "pipeline.execution", self.started_by, subject, details)
        except CardDataError:
            # A parameter value looks like a card number: keep the entry, withhold the values.
            details["parameters"] = dict.fromkeys(self.ctx.parameters, "<withheld>")
            record(self.workspace, "pipeline.execution", self.started_by, subject, details)

    def _should_run(self, step: StepDef, executed: set[str]) -> bool:
        """A step runs when all its dependencies ran and its branch (if any) was taken."""
        if not self.definition.dependencies(step.name) <= executed:
            return False
        if step.branch is None:
            return True
        condition, branch_value = step.branch
        return self.outcomes.get(condition) == branch_value

    def _reuse(self, step: StepDef, record: dict[str, Any]) -> None:
        """Resume: a step that succeeded before keeps its outputs and outcome."""
        self.ctx.step_properties[step.name] = record["properties"] or {}
        if step.type == "Condition":
            self.outcomes[step.name] = bool((record["properties"] or {}).get("Outcome"))
        self.progress.reused(step.name, step.type)

    def _stop(self, step_name: str | None) -> None:
        if step_name is not None:
            self.store.update_step(
                self.execution_id,
                step_name,
                status=STOPPED,
                end_time=now_iso(),
                failure_reason="stopped by the user",
            )
            step = self.definition.steps[step_name]
            self.events.step(step_name, step.type, EXECUTING, STOPPED)
        self.store.finish_execution(self.execution_id, STOPPED, "stopped by the user")
        self.events.execution(EXECUTING, STOPPED, self.start_time)

    # --- one step --------------------------------------------------------------------
    def _run_step(self, step: StepDef) -> str | None:
        """Run one step with its cache and retry policies; returns the failure reason or None."""
        log_path = self._log_path(step)
        self.progress.start(step.name, step.type)
        try:
            inputs = resolve(step.arguments, self.ctx)
        except ExecutorError as exc:
            return self._fail_unstarted(step, str(exc))
        # Only container steps run a program and write a log.
        has_log = step.type in JOB_STEPS
        self.store.start_step(
            self.execution_id, step.name, step.type, inputs, str(log_path) if has_log else None
        )
        self.events.step(step.name, step.type, "Starting", EXECUTING)
        try:
            if step.type in JOB_STEPS and step.cache_enabled:
                cache_key = self._cache_key(step, inputs)
                self.store.update_step(self.execution_id, step.name, cache_key=cache_key)
                if self._try_cache(step, cache_key):
                    return None
            self.store.update_step(self.execution_id, step.name, attempt_count=1)
            result = self._with_retries(step, inputs, log_path)
        except StepFailure as failure:
            return self._record_failure(step, failure)
        except ExecutorError as exc:
            return self._record_failure(step, StepFailure(str(exc), CLIENT_ERROR))
        self._record_success(step, result)
        return None

    def _with_retries(
        self, step: StepDef, inputs: dict[str, Any], log_path: Path
    ) -> containers.JobResult:
        retries = 0
        started = time.monotonic()
        while True:
            attempt = retries + 1
            if retries:
                self.store.update_step(self.execution_id, step.name, attempt_count=attempt)
            try:
                return self._execute(step, inputs, attempt, log_path)
            except StepFailure as failure:
                wait = retry_delay(
                    step.retry_policies,
                    failure.exception_type,
                    retries,
                    time.monotonic() - started,
                )
                if wait is None:
                    raise
                self.progress.retrying(step.name, attempt, failure.exception_type, wait)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with log_path.open("a", encoding="utf-8") as log:
                    log.write(
                        f"--- attempt {attempt} failed ({failure.exception_type}); "
                        f"retrying in {wait:.1f} s per RetryPolicies ---\n"
                    )
                time.sleep(wait)
                retries += 1

    def _execute(
        self, step: StepDef, inputs: dict[str, Any] | None, attempt: int, log_path: Path
    ) -> containers.JobResult:
        if step.type == "Processing":
            return self._job(step, inputs, attempt, log_path, containers.run_processing_job)
        if step.type == "Training":
            return self._job(step, inputs, attempt, log_path, containers.run_training_job)
        if step.type == "Tuning":
            return self._job(step, inputs, attempt, log_path, tuning.run_tuning_job)
        if step.type == "Condition":
            outcome = evaluate_conditions(inputs["Conditions"], self.ctx)
            self.outcomes[step.name] = outcome
            return containers.JobResult(
                {"Outcome": outcome}, {"Condition": {"Outcome": str(outcome)}}
            )
        if step.type == "Fail":
            message = format_value(inputs.get("ErrorMessage"))
            self.store.update_step(
                self.execution_id, step.name, metadata={"Fail": {"ErrorMessage": message}}
            )
            raise StepFailure(message, FAIL_STEP)
        if step.type == "RegisterModel":
            return self._register(inputs)
        return self._create_model(step, inputs)

    def _job(
        self,
        step: StepDef,
        inputs: dict[str, Any],
        attempt: int,
        log_path: Path,
        run: Callable[[dict[str, Any], containers.JobContext], containers.JobResult],
    ) -> containers.JobResult:
        scratch = self.directory / "scratch" / _slug(step.name) / f"attempt-{attempt}"
        if scratch.exists():
            shutil.rmtree(scratch)
        ctx = containers.JobContext(
            workspace=self.workspace,
            step_name=step.name,
            job_name=_job_name(self.execution_id, step.name),
            scratch=scratch,
            log_path=log_path,
        )
        result = run(inputs, ctx)
        # Outputs are in the object store now; the staged copies only cost disk. Deleting
        # them overlaps the next step (rmdir is slow on some file systems).
        cleanup = threading.Thread(
            target=shutil.rmtree, args=(scratch.parent,), kwargs={"ignore_errors": True}
        )
        cleanup.start()
        self.cleanups.append(cleanup)
        return result

    def _register(self, request: dict[str, Any]) -> containers.JobResult:
        registry = self.registry or _default_registry(self.workspace)
        try:
            created = registry.create_model_package(request, created_by=self.started_by)
        except OSError as exc:
            raise StepFailure(f"{SERVICE_FAULT}: model registry: {exc}", SERVICE_FAULT) from exc
        except Exception as exc:
            # The registry is another unit; whatever it rejects fails this step, not the executor.
            raise StepFailure(
                f"{CLIENT_ERROR}: model registration rejected ({type(exc).__name__}): {exc}",
                CLIENT_ERROR,
            ) from exc
        details = created if isinstance(created, dict) else {"ModelPackageArn": str(created)}
        arn = details.get("ModelPackageArn")
        if not arn:
            raise StepFailure("the model registry returned no ModelPackageArn", SERVICE_FAULT)
        properties = {**request, **{k: v for k, v in details.items() if isinstance(k, str)}}
        return containers.JobResult(properties, {"RegisterModel": {"Arn": arn}})

    def _create_model(self, step: StepDef, request: dict[str, Any]) -> containers.JobResult:
        """CreateModel has no container to run locally; the model is recorded by name."""
        name = _job_name(self.execution_id, step.name)
        arn = f"{ARN_PREFIX}:model/{name}"
        return containers.JobResult(
            {**request, "ModelName": name, "ModelArn": arn}, {"Model": {"Arn": arn}}
        )

    # --- caching ------------------------------------------------------------------------
    def _cache_key(self, step: StepDef, inputs: dict[str, Any]) -> str:
        """Hash of SageMaker's cache-key attributes plus the content of every input (incl. code).

        Like SageMaker, output locations are not part of the key (they often
        contain the execution id); unlike SageMaker, the bytes behind each
        input URI are, so changed data or code under the same URI re-runs.
        """
        attributes = {k: inputs.get(k) for k in CACHE_KEY_ATTRIBUTES[step.type]}
        content = {
            uri: objects.hash_tree(self.workspace.local_path(uri))
            for uri in _input_uris(step.type, inputs)
        }
        document = json.dumps(
            {"type": step.type, "attributes": attributes, "inputs": content},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(document.encode()).hexdigest()

    def _try_cache(self, step: StepDef, cache_key: str) -> bool:
        not_before = "0000"
        if step.cache_expire_after:
            oldest = datetime.now(UTC) - parse_duration(step.cache_expire_after)
            not_before = oldest.isoformat(timespec="milliseconds")
        hit = self.store.find_cached_step(self.pipeline_name, step.name, cache_key, not_before)
        if hit is None or hit["execution_id"] == self.execution_id:
            return False
        if not objects.outputs_intact(self.workspace, hit["output_hashes"] or {}):
            return False
        metadata = {k: v for k, v in (hit["metadata"] or {}).items() if k != "CacheHit"}
        metadata["CacheHit"] = hit["execution_id"]
        result = containers.JobResult(hit["properties"] or {}, metadata, hit["output_hashes"] or {})
        self._record_success(step, result, cached=True)
        return True

    # --- records -------------------------------------------------------------------------
    def _record_success(
        self, step: StepDef, result: containers.JobResult, cached: bool = False
    ) -> None:
        self.ctx.step_properties[step.name] = result.properties
        self.events.step(step.name, step.type, EXECUTING, SUCCEEDED, metadata=result.metadata)
        self.store.update_step(
            self.execution_id,
            step.name,
            status=SUCCEEDED,
            end_time=now_iso(),
            properties=result.properties,
            metadata=result.metadata,
            output_hashes=result.outputs,
            failure_reason=None,
        )
        note = ""
        if cached:
            note = f"cache hit from {result.metadata['CacheHit']}"
        elif step.type == "Condition":
            note = f"outcome {result.properties['Outcome']}"
        self.progress.finish(step.name, SUCCEEDED, note)

    def _record_failure(self, step: StepDef, failure: StepFailure) -> str:
        self.store.update_step(
            self.execution_id,
            step.name,
            status=FAILED,
            end_time=now_iso(),
            failure_reason=failure.reason,
        )
        log_path = self._log_path(step)
        self.events.step(
            step.name,
            step.type,
            EXECUTING,
            FAILED,
            failure_reason=failure.reason,
            metadata={"Fail": {"ErrorMessage": failure.reason}} if step.type == "Fail" else {},
            log_path=str(log_path) if log_path.is_file() else None,
        )
        self.progress.finish(step.name, FAILED, failure.reason.splitlines()[0])
        return failure.reason if step.type == "Fail" else f"step {step.name}: {failure.reason}"

    def _log_path(self, step: StepDef) -> Path:
        return self.directory / "logs" / f"{_slug(step.name)}.log"

    def _fail_unstarted(self, step: StepDef, reason: str) -> str:
        self.store.start_step(self.execution_id, step.name, step.type, None)
        return self._record_failure(step, StepFailure(reason, CLIENT_ERROR))


def summarize(store: ExecutionStore, execution_id: str) -> ExecutionSummary:
    """Build the summary of an execution from its records."""
    row = store.execution_row(execution_id)
    steps = [
        StepSummary(
            name=s["step_name"],
            type=s["step_type"],
            status=s["status"],
            attempts=s["attempt_count"],
            cache_hit=bool((s["metadata"] or {}).get("CacheHit")),
            failure_reason=s["failure_reason"],
            log_path=s["log_path"],
            metadata=s["metadata"] or {},
            properties=s["properties"] or {},
            inputs=s["inputs"],
        )
        for s in store.step_rows(execution_id)
    ]
    return ExecutionSummary(
        execution_id=execution_id,
        execution_arn=execution_arn(row["pipeline_name"], execution_id),
        pipeline_name=row["pipeline_name"],
        status=row["status"],
        failure_reason=row["failure_reason"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        steps=steps,
    )


def _input_uris(step_type: str, args: dict[str, Any]) -> list[str]:
    """Every object-store location a job reads: data inputs, channels and code."""
    if step_type == "Processing":
        return [str(i["S3Input"]["S3Uri"]) for i in args.get("ProcessingInputs") or []]
    if step_type == "Tuning":
        args = tuning.training_request(args)
    uris = [
        str(c["DataSource"]["S3DataSource"]["S3Uri"]) for c in args.get("InputDataConfig") or []
    ]
    submit = (args.get("HyperParameters") or {}).get("sagemaker_submit_directory")
    if submit:
        uris.append(str(submit).strip('"'))
    return uris


def _default_registry(workspace: Workspace) -> ModelRegistry:
    # Imported here: the executor knows registries only through ModelRegistry.
    from pipelines.model.registry import LocalModelRegistry
    # The workspace registry publishes approval events to the workspace bus and
    # records to its audit trail; a bare LocalModelRegistry would do neither.
    return LocalModelRegistry.for_workspace(workspace)


def _coerce_parameter(name: str, ptype: str, value: Any) -> Any:
    try:
        if ptype == "Integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value)) if not isinstance(value, float) else int(value)
        if ptype == "Float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if ptype == "Boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError
    except (TypeError, ValueError):
        raise ParameterError(f"pipeline parameter {name} must be {ptype}, got {value!r}") from None
    return str(value)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "step"


def _job_name(execution_id: str, step_name: str) -> str:
    """SageMaker-style job name: pipelines-<execution>-<step>-<random>, at most 63 chars."""
    step = re.sub(r"[^A-Za-z0-9]+", "-", step_name).strip("-").lower()[:30]
    return f"pipelines-{execution_id}-{step}-{secrets.token_hex(3)}"[:63].rstrip("-")


__all__ = [
    "EXECUTING",
    "ExecutionSummary",
    "StepSummary",
    "resume",
    "resume_pipeline_execution",
    "run_pipeline_definition",
    "summarize",
]
