"""Model registry with SageMaker's model-package semantics and audited approvals."""

from pipelines.model.registry.local import (
    APPROVAL_STATUSES,
    APPROVED,
    PENDING,
    REJECTED,
    FourEyesError,
    LocalModelRegistry,
    NotFoundError,
    RegistryError,
    group_arn,
    package_arn,
)

__all__ = [
    "APPROVAL_STATUSES",
    "APPROVED",
    "PENDING",
    "REJECTED",
    "FourEyesError",
    "LocalModelRegistry",
    "NotFoundError",
    "RegistryError",
    "group_arn",
    "package_arn",
]
