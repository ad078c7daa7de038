"""``fraudops infra``: render, package and deploy the AWS stacks of an environment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.commands._common import UserError
from pipelines.workflow.stack import STACK_ORDER, Environment


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("infra", help="render, package and deploy the AWS stacks")
    actions = parser.add_subparsers(dest="infra_action", required=True)

    render = actions.add_parser("render", help="print the workflow as Step Functions ASL")
    render.add_argument("--data-pipeline", action="store_true",
                        help="print the AWS Data Pipeline objects instead")
    render.set_defaults(handler=_render)

    deploy = actions.add_parser("deploy", help="package code and create/update every stack")
    deploy.add_argument("--env", required=True, choices=["dev", "staging", "prod"])
    deploy.add_argument("--code-version", default="latest", help="e.g. the git commit")
    deploy.add_argument("--copy-region-vault-arn", default="",
                        help="backup vault in a second region (required for the backup stack)")
    deploy.add_argument("--build-dir", type=Path, default=Path("build"))
    deploy.add_argument("--only", action="append", choices=STACK_ORDER)
    deploy.set_defaults(handler=_deploy)


def _render(args: argparse.Namespace) -> int:
    from pipelines.workflow.declaration import FRAUD_WORKFLOW
    from pipelines.workflow.render import to_data_pipeline, to_state_machine

    if args.data_pipeline:
        document: object = to_data_pipeline(
            FRAUD_WORKFLOW,
            log_uri="s3://${ArtifactsBucket}/datapipeline-logs/",
            role="DataPipelineDefaultRole",
            resource_role="DataPipelineDefaultResourceRole",
            failure_topic_arn="${FailuresTopicArn}",
        )
    else:
        document = to_state_machine(FRAUD_WORKFLOW)
    print(json.dumps(document, indent=2))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    import boto3

    from pipelines.workflow.stack import (
        build_artifacts,
        deploy_stack,
        stack_parameters,
        upload_artifacts,
    )

    env = Environment(args.env, code_version=args.code_version)
    stacks = [s for s in STACK_ORDER if not args.only or s in args.only]
    if "backup" in stacks and not args.copy_region_vault_arn:
        raise UserError("the backup stack copies to a second region: pass --copy-region-vault-arn")
    cloudformation = boto3.client("cloudformation")
    extra = {"CopyRegionVaultArn": args.copy_region_vault_arn}
    for stack in stacks:
        action = deploy_stack(cloudformation, env, stack, stack_parameters(env, stack, extra))
        print(f"{env.stack_name(stack)}: {action}")
        if stack == "storage":
            bucket = _output(cloudformation, env.stack_name("storage"), "ArtifactsBucket")
            upload_artifacts(boto3.client("s3"), bucket, env, build_artifacts(args.build_dir))
    return 0


def _output(cloudformation: object, stack_name: str, key: str) -> str:
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]  # type: ignore[attr-defined]
    for output in stack.get("Outputs", []):
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise UserError(f"stack {stack_name} has no output {key}; was it deployed?")
