"""Resolve pipeline expressions and evaluate conditions.

Supported, as in the SageMaker definition schema:
``{"Get": "Parameters.X"}``, ``{"Get": "Execution.PipelineExecutionId"}`` (and the
other execution variables), ``{"Get": "Steps.S.<property path>"}`` including
list selection by name (``Outputs['train']``) or index (``[0]``),
``{"Get": "Steps.S.PropertyFiles.F"}``, ``{"Std:Join": {"On", "Values"}}`` and
``{"Std:JsonGet": {"PropertyFile" | "S3Uri", "Path"}}``. Anything else is an
``UnsupportedFeatureError`` naming the expression.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.model.executor.definition import PipelineDefinition
from pipelines.model.executor.errors import (
    DefinitionError,
    ExpressionError,
    UnsupportedFeatureError,
)

EXECUTION_VARIABLES = (
    "PipelineExecutionId",
    "PipelineExecutionArn",
    "PipelineName",
    "PipelineArn",
    "StartDateTime",
    "CurrentDateTime",
)
FUNCTIONS = ("Std:Join", "Std:JsonGet")
CONDITION_TYPES = (
    "Equals",
    "GreaterThan",
    "GreaterThanOrEqualTo",
    "LessThan",
    "LessThanOrEqualTo",
    "In",
    "Not",
    "Or",
)
# List elements are selected by whichever of these names their shape uses.
_LIST_KEYS = ("OutputName", "InputName", "ChannelName", "MetricName", "Name", "Key")
_PATH_TOKEN = re.compile(
    r"\.?(?P<attr>[A-Za-z_][\w-]*)|\[(?P<index>\d+)\]|\['(?P<sq>[^']*)'\]|\[\"(?P<dq>[^\"]*)\"\]"
)


@dataclass(frozen=True)
class PropertyFileRef:
    """The value of ``{"Get": "Steps.S.PropertyFiles.F"}``: a file JsonGet can read."""

    step_name: str
    file_name: str


@dataclass
class ResolutionContext:
    """What expressions can read: parameters, execution variables, step properties."""

    definition: PipelineDefinition
    parameters: dict[str, Any]
    execution: dict[str, Any]
    read_json: Callable[[str], Any]
    step_properties: dict[str, dict[str, Any]] = field(default_factory=dict)


def is_expression(value: Any) -> bool:
    """True for a single-key dict that is a ``Get`` or ``Std:`` function."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    (key,) = value
    return key == "Get" or key.startswith("Std:")


def resolve(value: Any, ctx: ResolutionContext) -> Any:
    """Replace every expression inside ``value`` by its value (recursively)."""
    if is_expression(value):
        ((key, body),) = value.items()
        if key == "Get":
            return resolve_get(body, ctx)
        if key == "Std:Join":
            return _join(body, ctx)
        if key == "Std:JsonGet":
            return _json_get(body, ctx)
        raise UnsupportedFeatureError(
            f"expression function {key!r} is not supported by the local executor "
            f"(supported: Get, {', '.join(FUNCTIONS)})"
        )
    if isinstance(value, dict):
        return {k: resolve(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, ctx) for v in value]
    return value


def resolve_get(path: Any, ctx: ResolutionContext) -> Any:
    """Value of ``{"Get": path}``."""
    if not isinstance(path, str):
        raise DefinitionError(f"Get expects a string path, got {path!r}")
    root, _, rest = path.partition(".")
    if root == "Parameters":
        if rest not in ctx.parameters:
            raise DefinitionError(f"{{'Get': {path!r}}}: no pipeline parameter named {rest!r}")
        return ctx.parameters[rest]
    if root == "Execution":
        return _execution_variable(rest, ctx)
    if root == "Steps":
        return _step_property(path, rest, ctx)
    raise UnsupportedFeatureError(
        f"{{'Get': {path!r}}}: the local executor resolves Parameters.*, Execution.* and Steps.*"
    )


def evaluate_conditions(conditions: list[dict[str, Any]], ctx: ResolutionContext) -> bool:
    """A Condition step's outcome: all its conditions must hold."""
    return all(evaluate_condition(c, ctx) for c in conditions)


def evaluate_condition(condition: dict[str, Any], ctx: ResolutionContext) -> bool:
    """Evaluate one condition of the definition schema."""
    ctype = _condition_type(condition)
    if ctype == "Not":
        return not evaluate_condition(condition["Condition"], ctx)
    if ctype == "Or":
        return any(evaluate_condition(c, ctx) for c in condition["Conditions"])
    if ctype == "In":
        query = resolve(condition["QueryValue"], ctx)
        return any(_equal(query, resolve(v, ctx)) for v in condition["Values"])
    left = resolve(condition["LeftValue"], ctx)
    right = resolve(condition["RightValue"], ctx)
    if ctype == "Equals":
        return _equal(left, right)
    return _compare(ctype, left, right)


def check_condition_shape(condition: Any, where: str) -> None:
    """Raise if a condition (or a nested one) has a type the executor cannot evaluate."""
    if not isinstance(condition, dict):
        raise DefinitionError(f"{where}: a condition must be an object, got {condition!r}")
    ctype = _condition_type(condition)
    if ctype == "Not":
        check_condition_shape(condition.get("Condition"), where)
    elif ctype == "Or":
        for nested in condition.get("Conditions") or []:
            check_condition_shape(nested, where)


def property_path_tokens(path: str) -> list[str | int]:
    """Split ``A.B['x'][0].C`` into ``['A', 'B', 'x', 0, 'C']``."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if not match or match.end() == pos:
            raise DefinitionError(f"cannot parse property path {path!r} at position {pos}")
        if match.group("index") is not None:
            tokens.append(int(match.group("index")))
        else:
            tokens.append(
                next(g for g in (match["attr"], match["sq"], match["dq"]) if g is not None)
            )
        pos = match.end()
    return tokens


def select(value: Any, tokens: list[str | int], where: str) -> Any:
    """Walk ``tokens`` into nested dicts/lists; lists are selected by index or element name."""
    for token in tokens:
        value = _select_one(value, token, where)
    return value


def format_value(value: Any) -> str:
    """String form of a resolved value as SageMaker renders it in Join and logs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _execution_variable(name: str, ctx: ResolutionContext) -> Any:
    if name == "CurrentDateTime":
        return datetime.now(UTC).isoformat()
    if name in ctx.execution:
        return ctx.execution[name]
    raise UnsupportedFeatureError(
        f"{{'Get': 'Execution.{name}'}}: unknown execution variable "
        f"(supported: {', '.join(EXECUTION_VARIABLES)})"
    )


def _step_property(path: str, rest: str, ctx: ResolutionContext) -> Any:
    step_name, _, prop_path = rest.partition(".")
    if step_name not in ctx.definition.steps:
        raise DefinitionError(f"{{'Get': {path!r}}}: no step named {step_name!r}")
    tokens = property_path_tokens(prop_path) if prop_path else []
    if tokens[:1] == ["PropertyFiles"]:
        return _property_file_ref(path, step_name, tokens, ctx)
    if step_name not in ctx.step_properties:
        raise ExpressionError(
            f"{{'Get': {path!r}}}: step {step_name!r} has not run in this execution, "
            "so its properties do not exist yet"
        )
    return select(ctx.step_properties[step_name], tokens, path)


def _property_file_ref(
    path: str, step_name: str, tokens: list[str | int], ctx: ResolutionContext
) -> PropertyFileRef:
    if len(tokens) != 2 or tokens[1] not in ctx.definition.steps[step_name].property_files:
        raise DefinitionError(
            f"{{'Get': {path!r}}}: step {step_name!r} declares no such property file "
            f"(it declares {sorted(ctx.definition.steps[step_name].property_files)})"
        )
    return PropertyFileRef(step_name, str(tokens[1]))


def _select_one(value: Any, token: str | int, where: str) -> Any:
    if isinstance(value, dict):
        if token in value:
            return value[token]
        raise ExpressionError(
            f"{where}: no property {token!r} (available: {', '.join(map(str, value)) or 'none'})"
        )
    if isinstance(value, list):
        if isinstance(token, int):
            if token < len(value):
                return value[token]
            raise ExpressionError(f"{where}: index {token} is out of range (length {len(value)})")
        for item in value:
            if isinstance(item, dict) and any(item.get(k) == token for k in _LIST_KEYS):
                return item
        raise ExpressionError(f"{where}: no list element named {token!r}")
    raise ExpressionError(f"{where}: cannot select {token!r} from the value {value!r}")


def _join(body: Any, ctx: ResolutionContext) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("Values"), list):
        raise DefinitionError(f"Std:Join needs {{'On': str, 'Values': list}}, got {body!r}")
    separator = format_value(resolve(body.get("On", ""), ctx))
    return separator.join(format_value(resolve(v, ctx)) for v in body["Values"])


def _json_get(body: Any, ctx: ResolutionContext) -> Any:
    if not isinstance(body, dict) or "Path" not in body:
        raise DefinitionError(f"Std:JsonGet needs a Path and a PropertyFile or S3Uri, got {body!r}")
    if "PropertyFile" in body:
        uri = _property_file_uri(body["PropertyFile"], ctx)
    elif "S3Uri" in body:
        uri = format_value(resolve(body["S3Uri"], ctx))
    else:
        raise DefinitionError(f"Std:JsonGet needs a PropertyFile or an S3Uri, got {body!r}")
    document = ctx.read_json(uri)
    json_path = format_value(resolve(body["Path"], ctx)).removeprefix("$").lstrip(".")
    return select(document, property_path_tokens(json_path), f"Std:JsonGet {uri} {json_path!r}")


def _property_file_uri(ref: Any, ctx: ResolutionContext) -> str:
    if isinstance(ref, str):
        owners = [s for s in ctx.definition.steps.values() if ref in s.property_files]
        if len(owners) != 1:
            raise DefinitionError(
                f"Std:JsonGet names property file {ref!r}, declared by {len(owners)} steps "
                "(need exactly one)"
            )
        ref = PropertyFileRef(owners[0].name, ref)
    else:
        ref = resolve(ref, ctx)
    if not isinstance(ref, PropertyFileRef):
        raise DefinitionError(f"Std:JsonGet PropertyFile must name a property file, got {ref!r}")
    property_file = ctx.definition.steps[ref.step_name].property_files[ref.file_name]
    where = f"property file {ref.file_name!r} of step {ref.step_name!r}"
    if ref.step_name not in ctx.step_properties:
        raise ExpressionError(f"{where}: step {ref.step_name!r} has not run in this execution")
    output = select(
        ctx.step_properties[ref.step_name],
        ["ProcessingOutputConfig", "Outputs", property_file.output_name, "S3Output", "S3Uri"],
        where,
    )
    return f"{str(output).rstrip('/')}/{property_file.file_path.lstrip('/')}"


def _condition_type(condition: dict[str, Any]) -> str:
    ctype = str(condition.get("Type", "")).removeprefix("Condition")
    if ctype not in CONDITION_TYPES:
        raise UnsupportedFeatureError(
            f"condition Type {condition.get('Type')!r} is not supported "
            f"(supported: {', '.join(CONDITION_TYPES)})"
        )
    return ctype


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, int | float) or isinstance(right, int | float):
        lnum, rnum = _as_number(left), _as_number(right)
        if lnum is not None and rnum is not None:
            return lnum == rnum
    return (
        format_value(left) == format_value(right)
        if type(left) is not type(right)
        else left == right
    )


def _compare(ctype: str, left: Any, right: Any) -> bool:
    lnum, rnum = _as_number(left), _as_number(right)
    if lnum is not None and rnum is not None:
        a, b = lnum, rnum
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right
    else:
        raise ExpressionError(f"cannot compare {left!r} with {right!r} in a {ctype} condition")
    return {
        "GreaterThan": a > b,
        "GreaterThanOrEqualTo": a >= b,
        "LessThan": a < b,
        "LessThanOrEqualTo": a <= b,
    }[ctype]
