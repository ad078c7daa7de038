"""``run-pipeline``: create or update the pipeline, run one execution, wait for it.

Compatible with the SageMaker MLOps project template's CodeBuild buildspec::

    run-pipeline --module-name pipelines.fraud.pipeline \\
        --role-arn "$SAGEMAKER_PIPELINE_ROLE_ARN" \\
        --tags '[{"Key": "sagemaker:project-name", "Value": "fraud"}]' \\
        --kwargs '{"region": "us-east-1", "default_bucket": "my-bucket"}' \\
        --backend aws

Backends:

* ``local`` (default): renders the definition offline, copies its code into
  the workspace object store and runs it with the Docker-free local executor
  (``pipelines.model.executor``). No AWS account needed.
* ``aws``: upserts the pipeline in SageMaker Pipelines (tags included), starts
  an execution with ``--pipeline-parameters`` and waits, printing each step's
  status as it changes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from pipelines.cli.arguments import add_pipeline_module_arguments, configure_cli_logging
from pipelines.fraud.modules import (
    ArgumentError,
    convert_kwargs,
    convert_tags,
    get_pipeline_custom_tags,
    get_pipeline_driver,
)

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = ("Succeeded", "Failed", "Stopped")


def build_parser() -> argparse.ArgumentParser:
    from pipelines.cli.commands._common import add_workdir_argument

    parser = argparse.ArgumentParser(
        prog="run-pipeline",
        description="Creates/updates the pipeline and runs an execution (local or on AWS).",
    )
    add_pipeline_module_arguments(parser)
    parser.add_argument(
        "-role-arn", "--role-arn", dest="role_arn", default=None,
        help="role SageMaker Pipelines assumes (aws backend)",
    )  # fmt: skip
    parser.add_argument(
        "-description", "--description", dest="description", default=None,
        help="pipeline description (aws backend)",
    )  # fmt: skip
    parser.add_argument(
        "-tags", "--tags", dest="tags", default=None,
        help='JSON list of tags, e.g. \'[{"Key": "team", "Value": "fraud"}]\'',
    )  # fmt: skip
    parser.add_argument(
        "--pipeline-parameters", dest="pipeline_parameters", default=None,
        help='JSON object overriding pipeline parameters, e.g. \'{"QualityThresholdAP": 0.3}\'',
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=("local", "aws"), default="local",
        help="where the execution runs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-wait", dest="wait", action="store_false",
        help="aws backend: return once the execution has started",
    )  # fmt: skip
    parser.add_argument(
        "--poll-seconds", type=float, default=30.0,
        help="aws backend: seconds between status checks (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout-minutes", type=float, default=24 * 60,
        help="aws backend: stop waiting after this long (default: %(default)s)",
    )  # fmt: skip
    add_workdir_argument(parser)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show the SageMaker SDK's notices"
    )
    return parser


# --- aws -------------------------------------------------------------------------


def _step_statuses(sm_client, execution_arn: str) -> dict[str, str]:
    """Step name -> status of an execution, all pages."""
    statuses: dict[str, str] = {}
    kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "SortOrder": "Ascending"}
    while True:
        page = sm_client.list_pipeline_execution_steps(**kwargs)
        for step in page.get("PipelineExecutionSteps", []):
            statuses[step["StepName"]] = step["StepStatus"]
        if not page.get("NextToken"):
            return statuses
        kwargs["NextToken"] = page["NextToken"]


def wait_for_execution(
    sm_client,
    execution_arn: str,
    *,
    poll_seconds: float,
    timeout_seconds: float,
    report: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the execution ends; report each step status change; return the description.

    Raises ``TimeoutError`` if it is still running after ``timeout_seconds``.
    """
    deadline = time.monotonic() + timeout_seconds
    seen: dict[str, str] = {}
    while True:
        for name, status in _step_statuses(sm_client, execution_arn).items():
            if seen.get(name) != status:
                report(f"  step {name}: {status}")
                seen[name] = status
        description = sm_client.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        if description["PipelineExecutionStatus"] in TERMINAL_STATUSES:
            return description
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"execution {execution_arn} still {description['PipelineExecutionStatus']} "
                f"after {timeout_seconds / 60:.0f} min; it keeps running in SageMaker"
            )
        sleep(poll_seconds)


def run_on_aws(args: argparse.Namespace, kwargs: dict[str, Any], tags: list, parameters) -> int:
    """Upsert the pipeline, start an execution, optionally wait; 0 if it succeeded."""
    from pipelines.fraud.pipeline import config_validation_cache

    if not args.role_arn:
        raise ArgumentError("--role-arn is required with --backend aws")
    with config_validation_cache():
        pipeline = get_pipeline_driver(args.module_name, kwargs)
        all_tags = get_pipeline_custom_tags(args.module_name, kwargs, tags)
        response = pipeline.upsert(
            role_arn=args.role_arn, description=args.description, tags=all_tags
        )
        print(f"Created/updated pipeline {pipeline.name}: {response['PipelineArn']}")
        execution = pipeline.start(parameters=parameters or None)
    print(f"Execution started: {execution.arn}")
    if not args.wait:
        return 0
    sm_client = pipeline.sagemaker_session.sagemaker_client
    description = wait_for_execution(
        sm_client,
        execution.arn,
        poll_seconds=args.poll_seconds,
        timeout_seconds=args.timeout_minutes * 60,
    )
    status = description["PipelineExecutionStatus"]
    reason = description.get("FailureReason")
    print(f"Execution {status}" + (f": {reason}" if reason else ""))
    return 0 if status == "Succeeded" else 1


# --- local -----------------------------------------------------------------------


def run_locally(args: argparse.Namespace, kwargs: dict[str, Any], tags: list, parameters) -> int:
    """Render offline into the workspace and run with the local executor; 0 if it succeeded."""
    from pipelines.cli.commands._common import open_workspace
    from pipelines.fraud.local_run import run_pipeline_locally
    from pipelines.model.executor import ExecutorError

    if tags:
        logger.info("tags apply to AWS resources; the local backend records none")
    workspace = open_workspace(args)
    try:
        run = run_pipeline_locally(
            workspace, parameters, pipeline_kwargs=kwargs, module_name=args.module_name,
            on_rendered=lambda rendered: print(
                f"Pipeline {rendered.name}: code staged in {workspace.object_store}"),
        )
    except ExecutorError as exc:  # unsupported definition or bad --pipeline-parameters
        raise ArgumentError(str(exc)) from exc
    for step in run.execution.steps:
        reason = f" ({step.failure_reason})" if step.failure_reason else ""
        print(f"  step {step.name}: {step.status}{reason}")
    execution = run.execution
    reason = f": {execution.failure_reason}" if execution.failure_reason else ""
    print(f"Execution {execution.execution_id} {execution.status}{reason}")
    return 0 if run.succeeded else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli_logging(args.verbose)
    try:
        kwargs = convert_kwargs(args.kwargs)
        tags = convert_tags(args.tags)
        parameters = convert_kwargs(args.pipeline_parameters, option="--pipeline-parameters")
        run = run_on_aws if args.backend == "aws" else run_locally
        return run(args, kwargs, tags, parameters)
    except ArgumentError as exc:
        print(f"run-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"run-pipeline: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:  # AWS refused a call: say which and why
        print(f"run-pipeline: AWS error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
