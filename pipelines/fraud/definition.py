"""Render a pipeline definition offline: no credentials, no network.

The SDK uploads code while it builds the definition, so it needs an S3 to talk
to. ``render_definition`` runs ``get_pipeline(...).definition()`` inside moto's
``mock_aws`` with throw-away credentials, then (optionally) copies every object
the SDK uploaded into a local object-store tree (``<dir>/<bucket>/<key>``, the
layout of ``Workspace.object_store``), so the local executor finds exactly the
code the definition references.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.compliance.locks import file_lock
from pipelines.core.code import PACKAGE_DIR, unit_dir
from pipelines.core.fileio import write_bytes_atomically
from pipelines.core.workspace import ARTIFACTS_BUCKET

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


class _SdkNoiseFilter(logging.Filter):
    """Drop the SDK's records below ERROR.

    It narrates every default it applies and every field it pops from the
    definition, on loggers it creates and re-levels itself; that is noise for
    people running the workflow, so the filter sits on the root handlers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("sagemaker") or record.levelno >= logging.ERROR


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """Keep the SDK from reconfiguring logging and from narrating the render.

    Some SDK modules call ``logging.basicConfig`` when imported; a stand-in
    root handler makes that a no-op, and the process's logging is restored
    afterwards exactly as it was.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    noise = _SdkNoiseFilter()
    stand_in = logging.StreamHandler()
    for handler in [*saved_handlers, stand_in]:
        handler.addFilter(noise)
    if not saved_handlers:
        root.addHandler(stand_in)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for handler in saved_handlers:
            handler.removeFilter(noise)


def _create_bucket(s3_client, bucket: str, region: str) -> None:
    """Create ``bucket`` in the mocked S3 (us-east-1 takes no location constraint)."""
    if region == "us-east-1":
        s3_client.create_bucket(Bucket=bucket)
    else:
        s3_client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )


def _copy_uploaded_objects(s3_client, code_store_dir: Path) -> list[str]:
    """Copy every object in the mocked S3 to ``code_store_dir/<bucket>/<key>``."""
    copied = []
    for bucket in s3_client.list_buckets()["Buckets"]:
        name = bucket["Name"]
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            for item in page.get("Contents", []):
                body = s3_client.get_object(Bucket=name, Key=item["Key"])["Body"].read()
                write_bytes_atomically(code_store_dir / name / item["Key"], body)
                copied.append(f"s3://{name}/{item['Key']}")
    return copied


@dataclass(frozen=True)
class RenderedPipeline:
    """A pipeline's name and definition JSON, and where its code was copied."""

    name: str
    definition: str
    code_objects: tuple[str, ...]  # s3:// URIs copied into code_store_dir


def render_pipeline(
    pipeline_kwargs: dict[str, Any],
    *,
    code_store_dir: Path | None = None,
    module_name: str = DEFAULT_MODULE,
) -> RenderedPipeline:
    """Build ``module_name.get_pipeline(**pipeline_kwargs)`` under moto and render it.

    Needs no AWS account and no network. Missing kwargs default to the local
    backend (see ``offline_kwargs``). When ``code_store_dir`` is given, every
    object the SDK uploaded (code tarballs, runproc.sh, helpers) is copied
    there as ``<bucket>/<key>``.
    """
    kwargs = offline_kwargs(pipeline_kwargs)
    with _offline_environment(kwargs["region"]), _quiet_sdk():
        import boto3
        from moto import mock_aws

        from pipelines.fraud.modules import check_pipeline_kwargs, import_pipeline_module
        from pipelines.fraud.pipeline import config_validation_cache

        module = import_pipeline_module(module_name)
        check_pipeline_kwargs(module, kwargs)
        with mock_aws(), config_validation_cache():
            s3_client = boto3.client("s3", region_name=kwargs["region"])
            _create_bucket(s3_client, kwargs["default_bucket"], kwargs["region"])
            pipeline = module.get_pipeline(**kwargs)
            definition = pipeline.definition()
            copied = []
            if code_store_dir is not None:
                copied = _copy_uploaded_objects(s3_client, Path(code_store_dir))
    return RenderedPipeline(pipeline.name, definition, tuple(copied))


def render_definition(
    pipeline_kwargs: dict[str, Any],
    *,
    code_store_dir: Path | None = None,
    module_name: str = DEFAULT_MODULE,
) -> str:
    """The definition JSON of ``get_pipeline(**pipeline_kwargs)``, rendered offline.

    See ``render_pipeline``; with ``code_store_dir`` (e.g. a workspace's
    ``object_store``) the code the definition references is copied there.
    """
    return render_pipeline(
        pipeline_kwargs, code_store_dir=code_store_dir, module_name=module_name
    ).definition


# --- render cache ------------------------------------------------------------------

# Everything a render reads: the definition code and the code it ships.
RENDER_INPUTS: tuple[str, ...] = ("processing", "training", "inference")


def render_fingerprint(pipeline_kwargs: dict[str, Any], module_name: str = DEFAULT_MODULE) -> str:
    """A hash of everything that decides the definition: code, kwargs, SDK version."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    header = {"kwargs": offline_kwargs(pipeline_kwargs), "module": module_name,
              "sagemaker": version("sagemaker")}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    folders = {"pipelines/fraud": PACKAGE_DIR / "fraud"}
    folders.update({unit: unit_dir(unit) for unit in RENDER_INPUTS})
    for name, folder in folders.items():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{name}/{path.relative_to(folder).as_posix()}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def render_pipeline_cached(
    pipeline_kwargs: dict[str, Any],
    *,
    code_store_dir: Path,
    cache_dir: Path,
    module_name: str = DEFAULT_MODULE,
) -> RenderedPipeline:
    """``render_pipeline``, reusing an earlier render of exactly the same inputs.

    Importing the SDK and building the definition takes ~20 s; a rerun with
    unchanged code and kwargs (the common case for ``fraudops run``) gets the
    identical definition back from the cache, provided the staged code objects
    it references are still in ``code_store_dir``.
    """
    if module_name != DEFAULT_MODULE:  # its inputs are not known to the fingerprint
        return render_pipeline(pipeline_kwargs, code_store_dir=code_store_dir,
                               module_name=module_name)
    entry = cache_dir / f"{render_fingerprint(pipeline_kwargs, module_name)}.json"
    # One render per entry at a time: a caller arriving while another process
    # (``render_in_background``) renders the same inputs waits for it and reads its result.
    with file_lock(entry.with_suffix(".lock"), purpose="rendering the pipeline definition"):
        if entry.is_file():
            cached = json.loads(entry.read_text(encoding="utf-8"))
            staged = (code_store_dir / uri.removeprefix("s3://")
                      for uri in cached["code_objects"])
            if all(path.is_file() for path in staged):
                return RenderedPipeline(cached["name"], cached["definition"],
                                        tuple(cached["code_objects"]))
        rendered = render_pipeline(pipeline_kwargs, code_store_dir=code_store_dir,
                                   module_name=module_name)
        payload = {"name": rendered.name, "definition": rendered.definition,
                   "code_objects": list(rendered.code_objects)}
        write_bytes_atomically(entry, json.dumps(payload).encode())
    return rendered


def _render_into_cache(pipeline_kwargs: dict[str, Any], code_store_dir: Path,
                       cache_dir: Path) -> None:
    """The background process of ``render_in_background``: fill the cache, say nothing.

    A failure here is not reported: the foreground render of the same inputs
    then runs itself and reports it where the user sees it.
    """
    # Lowest priority: it is meant to use the core the data steps leave idle, not to slow them.
    os.nice(19)
    with suppress(Exception):
        render_pipeline_cached(pipeline_kwargs, code_store_dir=code_store_dir,
                               cache_dir=cache_dir)


@contextmanager
def render_in_background(
    pipeline_kwargs: dict[str, Any], *, code_store_dir: Path, cache_dir: Path
) -> Iterator[None]:
    """Render the default pipeline into the cache in another process during the block.

    Importing the SDK and building the definition costs seconds of one core
    that a workflow can spend while its data steps run; the pipeline step's
    ``render_pipeline_cached`` then waits for this render (the entry's lock)
    and reuses it: the same function, so the same definition. A separate
    process, because a render swaps the environment's credentials and patches
    botocore (moto) for the whole process. Left early, the block stops it.
    """
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads
    process = spawn.Process(target=_render_into_cache, daemon=True,
                            args=(dict(pipeline_kwargs), Path(code_store_dir), Path(cache_dir)))
    process.start()
    try:
        yield
    finally:
        if process.is_alive():
            process.terminate()  # writes are atomic and the lock dies with it
        process.join()
