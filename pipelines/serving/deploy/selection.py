"""Which model version serves or scores: the one given, else the deployed one.

``fraudops serve`` and ``fraudops score`` use the model the endpoint serves,
so batch and real-time scores come from the same version; an explicit version
must be approved, since unapproved models never score real transactions.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.workspace import Workspace
from pipelines.fraud.local_run import last_rejection
from pipelines.model.registry import APPROVED, LocalModelRegistry, RegistryError
from pipelines.serving.deploy.local import read_endpoint_state


class SelectionError(Exception):
    """No usable model version; the message says what to do."""


def select_package(
    workspace: Workspace, version: str | None = None, group: str | None = None
) -> dict[str, Any]:
    """The described model package to use (DescribeModelPackage shape)."""
    registry = LocalModelRegistry(workspace.registry_db)
    try:
        if version is not None:
            package = registry.describe_model_package(registry.resolve_arn(version, group))
        else:
            state = read_endpoint_state(workspace)
            if state is None:
                rejection = last_rejection(workspace)
                why = f". The last pipeline run registered nothing: {rejection.line()}" if (
                    rejection) else ""
                raise SelectionError(
                    "no model is deployed: approve one ('fraudops model approve VERSION') "
                    f"or pass --version{why}"
                )
            package = registry.describe_model_package(state["model_package_arn"])
    except RegistryError as exc:
        raise SelectionError(str(exc)) from exc
    if package["ModelApprovalStatus"] != APPROVED:
        raise SelectionError(
            f"model version {package['ModelPackageVersion']} is "
            f"{package['ModelApprovalStatus']}: only approved models score transactions"
        )
    return package
