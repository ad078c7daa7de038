"""Load a pipeline module by name and build its pipeline, as the SageMaker project template does.

Same names and behaviour as the template's ``pipelines/_utils.py``, so its
CodeBuild buildspec works unchanged; the command-line side lives in
``pipelines.cli.arguments``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


class ArgumentError(ValueError):
    """A malformed ``--kwargs``/``--tags``/``--pipeline-parameters`` value."""


def convert_struct(str_struct: str | None = None, *, option: str = "value") -> Any:
    """Parse a JSON (or Python literal) structure given on the command line.

    JSON first (what shells and the buildspec pass), then a Python literal like
    the template did; empty or None gives ``{}``.
    """
    if not str_struct or not str_struct.strip():
        return {}
    try:
        return json.loads(str_struct)
    except json.JSONDecodeError as json_error:
        try:
            return ast.literal_eval(str_struct)
        except (ValueError, SyntaxError):
            raise ArgumentError(
                f"{option} is not valid JSON ({json_error.msg} at character {json_error.pos}): "
                f"{str_struct!r}. Quote it for the shell, e.g. '{{\"region\": \"us-east-1\"}}'."
            ) from None


def convert_kwargs(str_struct: str | None, option: str = "--kwargs") -> dict[str, Any]:
    """``convert_struct`` that must give a JSON object."""
    value = convert_struct(str_struct, option=option)
    if not isinstance(value, dict):
        raise ArgumentError(f"{option} must be a JSON object like '{{\"key\": \"value\"}}'")
    return value


def convert_tags(str_struct: str | None) -> list[dict[str, str]]:
    """``--tags``: a JSON list of ``{"Key": ..., "Value": ...}``."""
    value = convert_struct(str_struct, option="--tags")
    if value == {}:
        return []
    if not isinstance(value, list) or not all(
        isinstance(tag, dict) and set(tag) == {"Key", "Value"} for tag in value
    ):
        raise ArgumentError(
            '--tags must be a JSON list like \'[{"Key": "team", "Value": "fraud"}]\''
        )
    return value


def import_pipeline_module(module_name: str):
    """Import the module holding ``get_pipeline``; a clear error if it is missing."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ArgumentError(f"--module-name {module_name!r} cannot be imported: {exc}") from exc
    if not callable(getattr(module, "get_pipeline", None)):
        raise ArgumentError(f"--module-name {module_name!r} has no get_pipeline(...) function")
    return module


def check_pipeline_kwargs(module, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments ``module.get_pipeline`` does not take, naming those it does."""
    parameters = inspect.signature(module.get_pipeline).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ArgumentError(
            f"--kwargs has {', '.join(unknown)}, which {module.__name__}.get_pipeline does not "
            f"take; it takes: {', '.join(parameters)}"
        )


def get_pipeline_driver(module_name: str, passed_args: str | dict[str, Any] | None = None):
    """Build the pipeline: ``<module_name>.get_pipeline(**kwargs)``."""
    module = import_pipeline_module(module_name)
    kwargs = passed_args if isinstance(passed_args, dict) else convert_kwargs(passed_args)
    check_pipeline_kwargs(module, kwargs)
    return module.get_pipeline(**kwargs)


def get_pipeline_custom_tags(
    module_name: str, args: str | dict[str, Any] | None, tags: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Tags from the module's optional ``get_pipeline_custom_tags`` (project tags).

    As in the template, a failure here only logs: the pipeline is still
    created with the tags given on the command line.
    """
    module = import_pipeline_module(module_name)
    custom = getattr(module, "get_pipeline_custom_tags", None)
    if custom is None:
        return tags
    kwargs = args if isinstance(args, dict) else convert_kwargs(args)
    try:
        return custom(tags, kwargs.get("region"), kwargs.get("sagemaker_project_name"))
    except Exception as exc:  # the template tolerates a missing project the same way
        logger.warning("could not read the SageMaker project's tags: %s", exc)
        return tags
