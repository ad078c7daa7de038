"""``fraudops model``: review registered models, approve or reject them, deploy.

Approving emits the model-package state-change event; the deploy handler
subscribed to it starts the approved version behind the local endpoint (and
rolls back if it is unhealthy). Rejecting never deploys.

The decision is made by the operating-system account running the command
(``pipelines.core.identity``); ``--approver`` only adds a display name beside it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.core.identity import USER_ENV, Actor, current_actor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="list, show, approve, reject and deploy registered models",
        description="The model registry: review model packages and decide on them. "
        "Approval by a second person deploys the version; rejection never does.",
    )
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="model package versions, newest first")
    listing.add_argument("--status", choices=("PendingManualApproval", "Approved", "Rejected"))
    _common(listing, version=False)
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one version: artifact, metrics, decision history")
    _common(show)
    show.set_defaults(handler=run_show)

    for name, status in (("approve", "Approved"), ("reject", "Rejected")):
        decide = actions.add_parser(
            name,
            help=f"{name} a version (approval deploys it)"
            if name == "approve"
            else "reject a pending version, or retire an approved one (never deploys)",
        )
        _common(decide)
        decide.add_argument(
            "--approver",
            default=None,
            metavar="DISPLAY_NAME",
            help=f"a display name recorded beside your account (default ${USER_ENV}); "
            "the decision is always your operating-system account's",
        )
        decide.add_argument("--reason", required=True, help="why (kept in the decision history)")
        decide.set_defaults(handler=run_decide, status=status)

    deploy = actions.add_parser(
        "deploy", help="(re)deploy an approved version, e.g. to roll back to an older one"
    )
    _common(deploy)
    deploy.set_defaults(handler=run_deploy)

    history = actions.add_parser("deployments", help="the current endpoint and every attempt")
    history.add_argument("--limit", type=int, default=20)
    _common(history, version=False)
    history.set_defaults(handler=run_deployments)

    stop = actions.add_parser("undeploy", help="stop the local endpoint process")
    _common(stop, version=False)
    stop.set_defaults(handler=run_undeploy)


def _common(parser: argparse.ArgumentParser, version: bool = True) -> None:
    if version:
        parser.add_argument("version", metavar="VERSION", help="version number or package ARN")
    parser.add_argument(
        "--group", default=None, help="model package group (default: the only group)"
    )
    add_workdir_argument(parser)


def _registry(args: argparse.Namespace):
    from pipelines.model.registry import LocalModelRegistry

    return LocalModelRegistry.for_workspace(open_workspace(args))


def _describe(registry: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.model.registry import RegistryError

    try:
        return registry.describe_model_package(registry.resolve_arn(args.version, args.group))
    except RegistryError as exc:
        raise UserError(str(exc)) from exc


def run_list(args: argparse.Namespace) -> int:
    from pipelines.fraud.local_run import last_rejection

    registry = _registry(args)
    summaries = registry.list_model_packages(args.group, args.status)["ModelPackageSummaryList"]
    rejection = last_rejection(open_workspace(args))
    rejected = (f"the last pipeline run ({rejection.execution_id}) registered nothing: "
                f"{rejection.line()}") if rejection else ""
    if not summaries:
        print(rejected or "no model packages registered yet: run the pipeline ('fraudops run')")
        return 0
    table = Table(title="model packages")
    for column in ("group", "version", "approval", "created", "description"):
        table.add_column(column)
    for item in summaries:
        table.add_row(
            item["ModelPackageGroupName"],
            str(item["ModelPackageVersion"]),
            item["ModelApprovalStatus"],
            item["CreationTime"][:19],
            item["ModelPackageDescription"],
        )
    Console().print(table)
    if rejected:
        print(rejected)
    return 0


def _approval(package: dict[str, Any]) -> str:
    """The approval status, flagged when it is the demo self-approval of `fraudops run`."""
    from pipelines.model.registry import APPROVED, DEMO, DEMO_NOTICE

    status = package["ModelApprovalStatus"]
    if status == APPROVED and package.get("ApprovalKind") == DEMO:
        return f"{status} ({DEMO_NOTICE})"
    return status


def run_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    package = _describe(registry, args)
    container = package["InferenceSpecification"]["Containers"][0]
    metrics = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
    table = Table(title=package["ModelPackageArn"], show_header=False)
    for label, value in (
        ("version", str(package["ModelPackageVersion"])),
        ("approval", _approval(package)),
        ("created by", package["CreatedBy"]["UserProfileName"]),
        ("registered by", package["RegisteredBy"]["UserProfileName"]),
        ("created", package["CreationTime"]),
        ("artifact", container["ModelDataUrl"]),
        ("image", container["Image"]),
        ("handler", json.dumps(container.get("Environment", {}))),
        ("evaluation", metrics.get("S3Uri", "-")),
        ("metadata", json.dumps(package.get("CustomerMetadataProperties", {}))),
    ):
        table.add_row(label, value)
    console = Console()
    console.print(table)
    from pipelines.model.registry import DEMO

    decisions = registry.list_decisions(package["ModelPackageArn"])
    history = Table(title="decisions")
    for column in ("when", "from", "to", "kind", "approver (account)", "reason"):
        history.add_column(column)
    for decision in decisions:
        history.add_row(
            decision["DecidedAt"][:19],
            decision["FromStatus"],
            decision["ToStatus"],
            decision["Kind"].upper() if decision["Kind"] == DEMO else decision["Kind"],
            Actor(decision["Approver"], decision["ApproverDisplayName"]).label,
            decision["Reason"],
        )
    console.print(history if decisions else "no decisions yet")
    return 0


def _print_deliveries(deliveries: list[Any]) -> int:
    """Say what the subscribed deploy handler did; non-zero if it failed."""
    code = 0
    for delivery in deliveries:
        if delivery.error:
            print(f"{delivery.rule}: failed: {delivery.error}")
            code = 1
            continue
        result = delivery.result or {}
        print(f"{delivery.rule}: {result.get('status')}: {result.get('message')}")
        if result.get("status") in ("RolledBack", "Failed"):
            code = 1
    return code


def run_decide(args: argparse.Namespace) -> int:
    from pipelines.model.registry import RegistryError

    registry = _registry(args)
    package = _describe(registry, args)
    actor = current_actor(args.approver)
    try:
        result = registry.update_model_package(
            package["ModelPackageArn"], args.status, actor.account, args.reason, actor.display
        )
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    print(f"{package['ModelPackageArn']}: {args.status} by {actor.label}")
    return _print_deliveries(result["Deliveries"])


def run_deploy(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy.local import LocalEndpointBackend

    registry = _registry(args)
    package = _describe(registry, args)
    if package["ModelApprovalStatus"] != "Approved":
        raise UserError(
            f"version {package['ModelPackageVersion']} is {package['ModelApprovalStatus']}: "
            "only approved versions are deployed ('fraudops model approve')"
        )
    result = LocalEndpointBackend(open_workspace(args)).deploy(package)
    print(f"{result.status}: {result.message}")
    return 0 if result.ok else 1


def run_deployments(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy.local import LocalEndpointBackend

    backend = LocalEndpointBackend(open_workspace(args))
    current = backend.current()
    console = Console()
    if current:
        state = "running" if current["alive"] else "NOT running (run 'fraudops model deploy')"
        console.print(f"current: version {current['version']} at {current['url']} ({state})")
    else:
        console.print("current: nothing deployed")
    table = Table(title="deployment attempts")
    for column in ("id", "when", "version", "status", "message"):
        table.add_column(column)
    for row in backend.history.list(args.limit):
        table.add_row(
            str(row["id"]),
            row["finished_at"][:19],
            str(row["version"]),
            row["status"],
            row["message"],
        )
    console.print(table)
    return 0


def run_undeploy(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy.local import LocalEndpointBackend

    stopped = LocalEndpointBackend(open_workspace(args)).stop()
    print(f"stopped version {stopped['version']}" if stopped else "nothing was deployed")
    return 0
