"""Deploy on approval: the logic behind the deploy Lambda (and the local bus rule).

The handler reacts to ``SageMaker Model Package State Change`` events. It
re-reads the package from the registry rather than trusting the event, so a
stale or replayed "Approved" event for a package that has since been
rejected never deploys it.

On AWS an approval guard runs before deploying (four-eyes on the SageMaker
identities, ``SageMakerEndpointBackend.refuse_self_approval``). Locally the
registry itself refuses such approvals before any event is published.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pipelines.core.events import MODEL_PACKAGE_STATE_CHANGE
from pipelines.core.workspace import Workspace
from pipelines.model.registry import APPROVED
from pipelines.serving.deploy.backend import DeploymentResult, EndpointBackend

Describe = Callable[[str], dict[str, Any]]
# (package, event) -> a refusal result, or None if the approval may deploy.
ApprovalGuard = Callable[[dict[str, Any], dict[str, Any]], DeploymentResult | None]


class EventError(ValueError):
    """The event is not a model-package state change this handler understands."""


def package_arn_of(event: dict[str, Any]) -> str:
    """The model package ARN named by a state-change event."""
    if event.get("detail-type") != MODEL_PACKAGE_STATE_CHANGE:
        raise EventError(
            f"expected a {MODEL_PACKAGE_STATE_CHANGE!r} event, got {event.get('detail-type')!r}"
        )
    detail = event.get("detail") or {}
    arn = detail.get("ModelPackageArn") or next(iter(event.get("resources") or []), None)
    if not arn:
        raise EventError("the event names no ModelPackageArn")
    return arn


def handle_state_change(
    event: dict[str, Any],
    backend: EndpointBackend,
    describe: Describe,
    guard: ApprovalGuard | None = None,
) -> DeploymentResult:
    """Deploy the package if it is Approved now and ``guard`` lets it; record a skip otherwise."""
    package = describe(package_arn_of(event))
    status = package.get("ModelApprovalStatus")
    if status != APPROVED:
        reason = f"model package is {status}: never deployed"
        return backend.skip(package, reason)
    refusal = guard(package, event) if guard is not None else None
    return refusal if refusal is not None else backend.deploy(package)


def local_backend_and_registry(workspace: Workspace) -> tuple[EndpointBackend, Describe]:
    from pipelines.model.registry.local import LocalModelRegistry
    from pipelines.serving.deploy.local import LocalEndpointBackend

    registry = LocalModelRegistry(workspace.registry_db)
    return LocalEndpointBackend(workspace), registry.describe_model_package


def aws_backend_and_registry() -> tuple[EndpointBackend, Describe]:
    import boto3

    from pipelines.serving.deploy.aws import SageMakerEndpointBackend

    client = boto3.client("sagemaker")

    def describe(arn: str) -> dict[str, Any]:
        return client.describe_model_package(ModelPackageName=arn)

    return SageMakerEndpointBackend.from_environment(client), describe


def backend_for_context(context: Any) -> tuple[EndpointBackend, Describe]:
    """Local when the bus names a workspace (or FRAUDOPS_BACKEND=local), else SageMaker."""
    workspace_root = getattr(context, "workspace_root", None)
    if workspace_root or os.environ.get("FRAUDOPS_BACKEND", "aws") == "local":
        return local_backend_and_registry(Workspace.open(workspace_root))
    return aws_backend_and_registry()
