"""Check, before anything runs, that the executor supports everything a definition uses.

A run that fails half-way because the fourth step uses an expression the
executor cannot resolve wastes the first three steps; this walks every step
type, expression, condition and job shape up front and names the first
problem.
"""

from __future__ import annotations

from typing import Any

from pipelines.model.executor.containers import check_processing_shape, check_training_shape
from pipelines.model.executor.definition import PipelineDefinition, StepDef
from pipelines.model.executor.errors import DefinitionError, UnsupportedFeatureError
from pipelines.model.executor.expressions import (
    EXECUTION_VARIABLES,
    FUNCTIONS,
    check_condition_shape,
    is_expression,
    property_path_tokens,
)
from pipelines.model.executor.policies import parse_duration
from pipelines.model.executor.tuning import TUNING_PROPERTIES, check_tuning_shape

# Properties each step type exposes besides its (resolved) request arguments.
RUNTIME_PROPERTIES: dict[str, set[str]] = {
    "Processing": {"ProcessingJobName", "ProcessingJobArn", "ProcessingJobStatus", "ExitMessage"},
    "Training": {
        "TrainingJobName",
        "TrainingJobArn",
        "TrainingJobStatus",
        "SecondaryStatus",
        "ModelArtifacts",
        "FinalMetricDataList",
    },
    "RegisterModel": {
        "ModelPackageArn",
        "ModelPackageName",
        "ModelPackageVersion",
        "ModelPackageStatus",
        "ModelApprovalStatus",
        "CreationTime",
    },
    "Tuning": TUNING_PROPERTIES,
    "Model": {"ModelName", "ModelArn"},
    "Condition": {"Outcome"},
    "Fail": set(),
}


def check_supported(definition: PipelineDefinition) -> list[str]:
    """Raise on the first unsupported feature; return the expression kinds seen.

    The returned list (e.g. ``["Get:Parameters", "Std:Join"]``) lets a caller
    or test see what a real definition exercises.
    """
    seen: set[str] = set()
    for step in definition.steps.values():
        _check_step(step, definition, seen)
    return sorted(seen)


def _check_step(step: StepDef, definition: PipelineDefinition, seen: set[str]) -> None:
    where = f"step {step.name!r}"
    _walk(step.arguments, definition, where, seen)
    if step.type == "Processing":
        check_processing_shape(step.arguments, step.name)
    elif step.type == "Training":
        check_training_shape(step.arguments, step.name)
    elif step.type == "Tuning":
        check_tuning_shape(step.arguments, step.name)
    elif step.type == "Condition":
        conditions = step.arguments.get("Conditions")
        if not isinstance(conditions, list) or not conditions:
            raise DefinitionError(f"{where}: a Condition step needs a non-empty Conditions list")
        for condition in conditions:
            check_condition_shape(condition, where)
            seen.add(f"Condition:{str(condition.get('Type')).removeprefix('Condition')}")
    elif step.type == "Fail" and "ErrorMessage" not in step.arguments:
        raise DefinitionError(f"{where}: a Fail step needs Arguments.ErrorMessage")
    if step.cache_enabled and step.cache_expire_after:
        parse_duration(step.cache_expire_after)
    for policy in step.retry_policies:
        if "MaxAttempts" not in policy and "ExpireAfterMin" not in policy:
            raise DefinitionError(f"{where}: each RetryPolicy needs MaxAttempts or ExpireAfterMin")
    seen.add(f"Step:{step.type}")


def _walk(value: Any, definition: PipelineDefinition, where: str, seen: set[str]) -> None:
    if is_expression(value):
        ((key, body),) = value.items()
        if key == "Get":
            _check_get(body, definition, where, seen)
            return
        if key not in FUNCTIONS:
            raise UnsupportedFeatureError(
                f"{where}: expression function {key!r} is not supported by the local executor "
                f"(supported: Get, {', '.join(FUNCTIONS)})"
            )
        seen.add(key)
        if key == "Std:JsonGet" and isinstance(body, dict):
            _check_json_get(body, definition, where)
        _walk(body, definition, where, seen)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, definition, where, seen)
    elif isinstance(value, list):
        for item in value:
            _walk(item, definition, where, seen)


def _check_get(path: Any, definition: PipelineDefinition, where: str, seen: set[str]) -> None:
    if not isinstance(path, str):
        raise DefinitionError(f"{where}: Get expects a string path, got {path!r}")
    root, _, rest = path.partition(".")
    seen.add(f"Get:{root}")
    if root == "Parameters":
        if rest not in {p.name for p in definition.parameters}:
            raise DefinitionError(f"{where}: {{'Get': {path!r}}} names no declared parameter")
    elif root == "Execution":
        if rest not in EXECUTION_VARIABLES:
            raise UnsupportedFeatureError(
                f"{where}: {{'Get': {path!r}}}: unknown execution variable "
                f"(supported: {', '.join(EXECUTION_VARIABLES)})"
            )
    elif root == "Steps":
        _check_step_property(path, rest, definition, where)
    else:
        raise UnsupportedFeatureError(
            f"{where}: {{'Get': {path!r}}}: only Parameters.*, Execution.* and Steps.* resolve"
        )


def _check_step_property(path: str, rest: str, definition: PipelineDefinition, where: str) -> None:
    step_name, _, prop_path = rest.partition(".")
    target = definition.steps.get(step_name)
    if target is None:
        raise DefinitionError(f"{where}: {{'Get': {path!r}}} names no step {step_name!r}")
    tokens = property_path_tokens(prop_path) if prop_path else []
    if not tokens:
        raise DefinitionError(f"{where}: {{'Get': {path!r}}} names a step, not a property")
    if tokens[0] == "PropertyFiles":
        if len(tokens) != 2 or tokens[1] not in target.property_files:
            raise DefinitionError(
                f"{where}: {{'Get': {path!r}}}: step {step_name!r} declares no such property file"
            )
        return
    known = set(target.arguments) | RUNTIME_PROPERTIES[target.type]
    if tokens[0] not in known:
        raise UnsupportedFeatureError(
            f"{where}: {{'Get': {path!r}}}: a {target.type} step has no property "
            f"{tokens[0]!r} in the local executor (known: {', '.join(sorted(known))})"
        )


def _check_json_get(body: dict[str, Any], definition: PipelineDefinition, where: str) -> None:
    ref = body.get("PropertyFile")
    if isinstance(ref, str):
        owners = [s.name for s in definition.steps.values() if ref in s.property_files]
        if len(owners) != 1:
            raise DefinitionError(
                f"{where}: Std:JsonGet names property file {ref!r}, declared by "
                f"{len(owners)} steps (need exactly one)"
            )
    elif ref is None and "S3Uri" not in body:
        raise DefinitionError(f"{where}: Std:JsonGet needs a PropertyFile or an S3Uri")
