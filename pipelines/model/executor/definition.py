"""Parse a SageMaker pipeline definition JSON into steps and a run order.

The definition is the public SageMaker Pipelines schema ("Version",
"Parameters", "Steps" with "Arguments", "DependsOn", "CacheConfig",
"RetryPolicies", "PropertyFiles", and Condition steps that nest their
branch steps in "IfSteps"/"ElseSteps"). Dependencies are the explicit
``DependsOn`` plus every ``{"Get": "Steps.<name>..."}`` reference, as on
SageMaker; branch steps also depend on their Condition step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.model.executor.errors import DefinitionError, UnsupportedFeatureError

SUPPORTED_STEP_TYPES = (
    "Processing", "Training", "Tuning", "Condition", "Fail", "RegisterModel", "Model"
)
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
_STEP_REF = re.compile(r"^Steps\.([^.\[]+)")


@dataclass(frozen=True)
class ParameterDef:
    """One pipeline parameter: name, type and optional default."""

    name: str
    type: str
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class PropertyFileDef:
    """A JSON file a Processing step writes to one of its outputs (for JsonGet)."""

    name: str
    output_name: str
    file_path: str


@dataclass
class StepDef:
    """One step, flattened out of the (possibly nested) definition."""

    name: str
    type: str
    arguments: dict[str, Any]
    raw: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    property_files: dict[str, PropertyFileDef] = field(default_factory=dict)
    cache_enabled: bool = False
    cache_expire_after: str | None = None
    retry_policies: list[dict[str, Any]] = field(default_factory=list)
    # (condition step name, True for IfSteps / False for ElseSteps) for branch steps.
    branch: tuple[str, bool] | None = None
    if_steps: list[str] = field(default_factory=list)
    else_steps: list[str] = field(default_factory=list)

    @property
    def referenced_steps(self) -> set[str]:
        """Steps whose properties this step's arguments read (implicit dependencies)."""
        return set(iter_step_references(self.arguments))


@dataclass
class PipelineDefinition:
    """A parsed definition: parameters, steps by name and a topological run order."""

    version: str
    parameters: list[ParameterDef]
    steps: dict[str, StepDef]
    order: list[str]
    raw: dict[str, Any]

    def dependencies(self, step_name: str) -> set[str]:
        """Every step ``step_name`` must wait for."""
        return _dependencies(self.steps[step_name], self.steps)


def parse_definition(definition: str | dict[str, Any]) -> PipelineDefinition:
    """Parse definition JSON (text or already-loaded dict) and order its steps.

    Raises ``DefinitionError`` for malformed JSON, duplicate or unknown step
    names and dependency cycles, and ``UnsupportedFeatureError`` for step
    types the executor cannot run.
    """
    raw = _load(definition)
    parameters = [_parse_parameter(p, i) for i, p in enumerate(raw.get("Parameters") or [])]
    steps: dict[str, StepDef] = {}
    for step in _flatten_steps(raw.get("Steps"), branch=None):
        if step.name in steps:
            raise DefinitionError(
                f"step name {step.name!r} appears twice; step names must be unique"
            )
        steps[step.name] = step
    _check_references(steps)
    order = _topological_order(steps)
    return PipelineDefinition(
        version=str(raw.get("Version", "")),
        parameters=parameters,
        steps=steps,
        order=order,
        raw=raw,
    )


def iter_step_references(value: Any) -> Iterator[str]:
    """Yield the step names referenced by ``Get`` expressions anywhere in ``value``."""
    if isinstance(value, dict):
        get = value.get("Get")
        if isinstance(get, str) and len(value) == 1:
            match = _STEP_REF.match(get)
            if match:
                yield match.group(1)
            return
        for item in value.values():
            yield from iter_step_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_step_references(item)


def _load(definition: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(definition, dict):
        raw = definition
    else:
        try:
            raw = json.loads(definition)
        except json.JSONDecodeError as exc:
            raise DefinitionError(
                f"pipeline definition is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                f"{exc.msg}"
            ) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("Steps"), list):
        raise DefinitionError('pipeline definition must be a JSON object with a "Steps" list')
    return raw


def _parse_parameter(raw: Any, index: int) -> ParameterDef:
    if not isinstance(raw, dict) or not isinstance(raw.get("Name"), str):
        raise DefinitionError(f"Parameters[{index}] must be an object with a string Name")
    ptype = raw.get("Type", "String")
    if ptype not in PARAMETER_TYPES:
        raise UnsupportedFeatureError(
            f"parameter {raw['Name']!r} has Type {ptype!r}; supported: {', '.join(PARAMETER_TYPES)}"
        )
    return ParameterDef(
        name=raw["Name"],
        type=ptype,
        default=raw.get("DefaultValue"),
        has_default="DefaultValue" in raw,
    )


def _flatten_steps(raw_steps: Any, branch: tuple[str, bool] | None) -> Iterator[StepDef]:
    if not isinstance(raw_steps, list):
        raise DefinitionError("Steps (and a Condition's IfSteps/ElseSteps) must be lists")
    for index, raw in enumerate(raw_steps):
        step = _parse_step(raw, index, branch)
        yield step
        if step.type == "Condition":
            yield from _flatten_steps(raw["Arguments"].get("IfSteps", []), (step.name, True))
            yield from _flatten_steps(raw["Arguments"].get("ElseSteps", []), (step.name, False))


def _parse_step(raw: Any, index: int, branch: tuple[str, bool] | None) -> StepDef:
    if not isinstance(raw, dict) or not isinstance(raw.get("Name"), str):
        raise DefinitionError(f"Steps[{index}] must be an object with a string Name")
    name, step_type = raw["Name"], raw.get("Type")
    if step_type not in SUPPORTED_STEP_TYPES:
        raise UnsupportedFeatureError(
            f"step {name!r} has Type {step_type!r}, which the local executor does not run "
            f"(supported: {', '.join(SUPPORTED_STEP_TYPES)}); run this pipeline on the aws "
            "backend or change the step"
        )
    arguments = raw.get("Arguments")
    if not isinstance(arguments, dict):
        raise DefinitionError(f"step {name!r}: Arguments must be an object")
    cache = raw.get("CacheConfig") or {}
    step = StepDef(
        name=name,
        type=step_type,
        arguments=arguments,
        raw=raw,
        depends_on=list(raw.get("DependsOn") or []),
        property_files=_parse_property_files(name, raw.get("PropertyFiles") or []),
        cache_enabled=bool(cache.get("Enabled", False)),
        cache_expire_after=cache.get("ExpireAfter"),
        retry_policies=list(raw.get("RetryPolicies") or []),
        branch=branch,
    )
    if step_type == "Condition":
        step.if_steps = [s["Name"] for s in arguments.get("IfSteps", []) if isinstance(s, dict)]
        step.else_steps = [s["Name"] for s in arguments.get("ElseSteps", []) if isinstance(s, dict)]
        # Branch steps are steps of their own, not arguments of the condition.
        step.arguments = {k: v for k, v in arguments.items() if k not in ("IfSteps", "ElseSteps")}
    return step


def _parse_property_files(step_name: str, raw: list[Any]) -> dict[str, PropertyFileDef]:
    files = {}
    for item in raw:
        try:
            pf = PropertyFileDef(item["PropertyFileName"], item["OutputName"], item["FilePath"])
        except (KeyError, TypeError) as exc:
            raise DefinitionError(
                f"step {step_name!r}: each PropertyFiles entry needs PropertyFileName, "
                "OutputName and FilePath"
            ) from exc
        files[pf.name] = pf
    return files


def _dependencies(step: StepDef, steps: dict[str, StepDef]) -> set[str]:
    deps = set(step.depends_on) | step.referenced_steps
    deps |= _json_get_property_file_owners(step.arguments, steps)
    if step.branch:
        deps.add(step.branch[0])
    deps.discard(step.name)
    return deps


def _json_get_property_file_owners(value: Any, steps: dict[str, StepDef]) -> set[str]:
    """Owners of property files named by plain string in ``Std:JsonGet`` (older form)."""
    owners: set[str] = set()
    if isinstance(value, dict):
        json_get = value.get("Std:JsonGet")
        if isinstance(json_get, dict) and isinstance(json_get.get("PropertyFile"), str):
            owners |= {
                s.name for s in steps.values() if json_get["PropertyFile"] in s.property_files
            }
        for item in value.values():
            owners |= _json_get_property_file_owners(item, steps)
    elif isinstance(value, list):
        for item in value:
            owners |= _json_get_property_file_owners(item, steps)
    return owners


def _check_references(steps: dict[str, StepDef]) -> None:
    for step in steps.values():
        for dep in step.depends_on:
            if dep not in steps:
                raise DefinitionError(
                    f"step {step.name!r} DependsOn {dep!r}, which is not a step of this pipeline"
                )
        for ref in step.referenced_steps:
            if ref not in steps:
                raise DefinitionError(
                    f"step {step.name!r} reads properties of step {ref!r}, "
                    "which is not a step of this pipeline"
                )


def _topological_order(steps: dict[str, StepDef]) -> list[str]:
    """Kahn's algorithm; ties keep definition order so runs are reproducible."""
    position = {name: i for i, name in enumerate(steps)}
    pending = {name: _dependencies(step, steps) for name, step in steps.items()}
    order: list[str] = []
    while pending:
        ready = sorted((n for n, deps in pending.items() if not deps), key=position.__getitem__)
        if not ready:
            cycle = ", ".join(sorted(pending))
            raise DefinitionError(f"steps depend on each other in a cycle: {cycle}")
        first = ready[0]
        order.append(first)
        del pending[first]
        for deps in pending.values():
            deps.discard(first)
    return order
