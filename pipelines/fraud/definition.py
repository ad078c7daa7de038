"""Render a pipeline definition offline: no credentials, no network.

The SDK uploads code while it builds the definition, so it needs an S3 to talk
to. ``render_definition`` runs ``get_pipeline(...).definition()`` inside moto's
``mock_aws`` with throw-away credentials, then (optionally) copies every object
the SDK uploaded into a local object-store tree (``<dir>/<bucket>/<key>``, the
layout of ``Workspace.object_store``), so the local executor finds exactly the
code the definition references.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.workspace import ARTIFACTS_BUCKET, LAKE_BUCKET

DEFAULT_MODULE = "pipelines.fraud.pipeline"
DEFAULT_REGION = "us-east-1"
# moto's default account; never a real role.
OFFLINE_ROLE_ARN = "arn:aws:iam::123456789012:role/fraudops-offline"

# Environment the SDK reads while rendering; restored afterwards.
_OFFLINE_ENV = {
    "SAGEMAKER_VALIDATE_ROLE": "false",
    "AWS_ACCESS_KEY_ID": "offline",
    "AWS_SECRET_ACCESS_KEY": "offline",
    "AWS_SESSION_TOKEN": "offline",
}
# Credentials a user may have set must not leak into (or be used by) a render.
_CLEARED_ENV = ("AWS_PROFILE", "AWS_SECURITY_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")


def offline_kwargs(pipeline_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``pipeline_kwargs`` completed with the local backend's region, role and buckets."""
    kwargs = dict(pipeline_kwargs)
    kwargs.setdefault("region", DEFAULT_REGION)
    kwargs.setdefault("role", OFFLINE_ROLE_ARN)
    kwargs.setdefault("default_bucket", ARTIFACTS_BUCKET)
    if "input_features_uri" not in kwargs:
        kwargs.setdefault("lake_bucket", LAKE_BUCKET)
    return kwargs


@contextmanager
def _offline_environment(region: str) -> Iterator[None]:
    """Fake credentials, the region and no role validation, for the render only."""
    saved = dict(os.environ)
    try:
        for name in _CLEARED_ENV:
            os.environ.pop(name, None)
        os.environ.update(_OFFLINE_ENV)
        # The SDK resolves its region when sagemaker.mlops is first imported.
        os.environ["AWS_DEFAULT_REGION"] = region
        os.environ["AWS_REGION"] = region
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _load_get_pipeline(module_name: str) -> Callable[..., Any]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import pipeline module {module_name!r}: {exc}") from exc
    get_pipeline = getattr(module, "get_pipeline", None)
    if not callable(get_pipeline):
        raise ValueError(f"module {module_name!r} has no get_pipeline(...) function")
    return get_pipeline


def _write_atomically(path: Path, body: bytes) -> None:
    """Write through a temp file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_uploaded_objects(s3_client, code_store_dir: Path) -> list[str]:
    """Copy every object in the mocked S3 to ``code_store_dir/<bucket>/<key>``."""
    copied = []
    for bucket in s3_client.list_buckets()["Buckets"]:
        name = bucket["Name"]
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            for item in page.get("Contents", []):
                body = s3_client.get_object(Bucket=name, Key=item["Key"])["Body"].read()
                _write_atomically(code_store_dir / name / item["Key"], body)
                copied.append(f"s3://{name}/{item['Key']}")
    return copied


def render_definition(
    pipeline_kwargs: dict[str, Any],
    *,
    code_store_dir: Path | None = None,
    module_name: str = DEFAULT_MODULE,
) -> str:
    """The pipeline definition JSON of ``module_name.get_pipeline(**pipeline_kwargs)``.

    Runs under moto, so it needs no AWS account. Missing kwargs default to the
    local backend (see ``offline_kwargs``). When ``code_store_dir`` is given, the
    code the SDK uploaded is copied there as ``<bucket>/<key>``.
    """
    kwargs = offline_kwargs(pipeline_kwargs)
    with _offline_environment(kwargs["region"]):
        import boto3
        from moto import mock_aws

        from pipelines.fraud.pipeline import config_validation_cache

        get_pipeline = _load_get_pipeline(module_name)
        with mock_aws(), config_validation_cache():
            s3_client = boto3.client("s3", region_name=kwargs["region"])
            s3_client.create_bucket(Bucket=kwargs["default_bucket"])
            definition = get_pipeline(**kwargs).definition()
            if code_store_dir is not None:
                _copy_uploaded_objects(s3_client, Path(code_store_dir))
    return definition


# --- reading the code a step runs (for the local executor and tests) -------------


@dataclass(frozen=True)
class StepCode:
    """The code a Processing or Training step runs, as the definition names it."""

    step_name: str
    source_uri: str  # s3://.../sourcedir.tar.gz
    entry_script: str  # relative to the extracted source dir
    arguments: list[Any]  # container arguments (may hold {"Get": ...} expressions)


def _processing_code(step: dict, read_object: Callable[[str], bytes]) -> StepCode:
    """FrameworkProcessor: input ``code`` holds sourcedir.tar.gz, runproc.sh names the script."""
    args = step["Arguments"]
    inputs = {item["InputName"]: item["S3Input"]["S3Uri"] for item in args["ProcessingInputs"]}
    if "code" not in inputs or "entrypoint" not in inputs:
        raise ValueError(f"step {step['Name']!r} has no 'code'/'entrypoint' inputs")
    runproc = read_object(inputs["entrypoint"]).decode("utf-8")
    # The last command of runproc.sh is `<python> <script> "$@"`.
    command = [line for line in runproc.splitlines() if line.strip().endswith('"$@"')]
    if not command:
        raise ValueError(f"cannot find the entry script in {inputs['entrypoint']}")
    script = command[-1].split()[-2]
    return StepCode(
        step_name=step["Name"],
        source_uri=inputs["code"].rstrip("/") + "/sourcedir.tar.gz",
        entry_script=script,
        arguments=list(args["AppSpecification"].get("ContainerArguments", [])),
    )


def _training_code(step: dict) -> StepCode:
    """Framework script mode: ``sagemaker_program`` in ``sagemaker_submit_directory``."""
    hyper = step["Arguments"].get("HyperParameters", {})
    if "sagemaker_program" not in hyper or "sagemaker_submit_directory" not in hyper:
        raise ValueError(f"step {step['Name']!r} is not a script-mode training step")
    arguments: list[Any] = []
    for name, value in hyper.items():
        if not name.startswith("sagemaker_"):
            arguments += [f"--{name}", value]
    return StepCode(
        step_name=step["Name"],
        source_uri=_unquote(hyper["sagemaker_submit_directory"]),
        entry_script=_unquote(hyper["sagemaker_program"]),
        arguments=arguments,
    )


def _unquote(value: str) -> str:
    """Hyperparameters may be JSON-encoded strings (the v2 SDK did that)."""
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return value
    return decoded if isinstance(decoded, str) else value


def step_code(step: dict, read_object: Callable[[str], bytes]) -> StepCode:
    """The source tarball, entry script and arguments of a Processing/Training step.

    ``read_object(s3_uri) -> bytes`` reads from the object store holding the code.
    """
    if step["Type"] == "Processing":
        return _processing_code(step, read_object)
    if step["Type"] == "Training":
        return _training_code(step)
    raise ValueError(f"step {step['Name']!r} of type {step['Type']} runs no code")
