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
    render.set_defaults(handler=_render)

    build = actions.add_parser(
        "build", help="build every artifact the stacks reference (Lambda bundle and layers, "
        "Glue and EMR job code, CodeBuild source, state machine)")
    build.add_argument("--out", type=Path, required=True, help="folder to write them into")
    build.add_argument("--wheels", type=Path, default=None,
                       help="a folder of manylinux wheels for the layers (offline build)")
    build.set_defaults(handler=_build)

    deploy = actions.add_parser("deploy", help="upload the artifacts and create/update every stack")
    deploy.add_argument("--env", required=True, choices=["dev", "staging", "prod"])
    deploy.add_argument("--code-version", default="latest", help="e.g. the git commit")
    deploy.add_argument("--copy-region-vault-arn", default="",
                        help="backup vault in a second region (required for the backup stack)")
    deploy.add_argument("--artifacts", type=Path, default=None,
                        help="a folder `infra build` wrote (default: build into --build-dir)")
    deploy.add_argument("--build-dir", type=Path, default=Path("build"))
    deploy.add_argument("--wheels", type=Path, default=None,
                        help="a folder of manylinux wheels for the layers (offline build)")
    deploy.add_argument("--label-delay-days", type=int, default=None,
                        help="days until a fraud label is known, for the workflow's feature "
                        "job (default: pipelines/core/params.py DEFAULT_LABEL_DELAY_DAYS)")
    deploy.add_argument("--only", action="append", choices=STACK_ORDER)
    deploy.set_defaults(handler=_deploy)


def _render(args: argparse.Namespace) -> int:
    from pipelines.workflow.declaration import FRAUD_WORKFLOW
    from pipelines.workflow.render import to_state_machine

    print(json.dumps(to_state_machine(FRAUD_WORKFLOW), indent=2))
    return 0


def _build(args: argparse.Namespace) -> int:
    from pipelines.workflow.artifacts import BuildError, PipSource, build_artifacts, read_manifest

    try:
        build_artifacts(args.out, PipSource(find_links=args.wheels))
    except BuildError as exc:
        raise UserError(str(exc)) from exc
    manifest = read_manifest(args.out)
    for key, entry in manifest["artifacts"].items():
        unpacked = f", {entry['unzipped_bytes'] / 1e6:.1f} MB unpacked" if (
            "unzipped_bytes" in entry) else ""
        print(f"{key}: {entry['bytes'] / 1e6:.1f} MB{unpacked}")
    for function in manifest["functions"]:
        print(f"{function['handler']} + layers {', '.join(function['layers']) or '-'}: "
              f"{function['unzipped_bytes'] / 1e6:.1f} MB of Lambda's "
              f"{function['limit_bytes'] / 1e6:.1f} MB")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    import boto3

    from pipelines.workflow.artifacts import BuildError, PipSource, build_artifacts, deployable
    from pipelines.workflow.stack import deploy_stack, stack_parameters, upload_artifacts

    env = Environment(args.env, code_version=args.code_version)
    stacks = [s for s in STACK_ORDER if not args.only or s in args.only]
    if "backup" in stacks and not args.copy_region_vault_arn:
        raise UserError("the backup stack copies to a second region: pass --copy-region-vault-arn")
    try:
        if args.artifacts is None:
            build_artifacts(args.build_dir, PipSource(find_links=args.wheels))
        artifacts = deployable(args.artifacts or args.build_dir)
    except BuildError as exc:
        raise UserError(str(exc)) from exc
    cloudformation = boto3.client("cloudformation")
    extra = {"CopyRegionVaultArn": args.copy_region_vault_arn}
    if args.label_delay_days is not None:
        from pipelines.core.params import ParameterError, check_label_delay_days

        try:
            extra["LabelDelayDays"] = str(
                check_label_delay_days(args.label_delay_days, "--label-delay-days"))
        except ParameterError as exc:
            raise UserError(str(exc)) from exc
    uploaded = False
    for stack in stacks:
        # Every later stack reads code/<version>/ from the artifacts bucket, which the
        # storage stack creates: upload in between.
        if stack != "storage" and not uploaded:
            bucket = _output(cloudformation, env.stack_name("storage"), "ArtifactsBucket")
            keys = upload_artifacts(boto3.client("s3"), bucket, env, artifacts)
            print(f"uploaded {len(keys)} artifacts to s3://{bucket}/code/{env.code_version}/")
            uploaded = True
        action = deploy_stack(cloudformation, env, stack, stack_parameters(env, stack, extra))
        print(f"{env.stack_name(stack)}: {action}")
    return 0


def _output(cloudformation: object, stack_name: str, key: str) -> str:
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]  # type: ignore[attr-defined]
    for output in stack.get("Outputs", []):
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise UserError(f"stack {stack_name} has no output {key}; was it deployed?")
