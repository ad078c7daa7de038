"""Model registry with SageMaker's model-package semantics and audited approvals."""

from pipelines.model.registry.local import (
    APPROVAL_STATUSES,
    APPROVED,
    DEMO,
    DEMO_NOTICE,
    FOUR_EYES,
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
    "DEMO",
    "DEMO_NOTICE",
    "FOUR_EYES",
    "PENDING",
    "REJECTED",
    "FourEyesError",
    "LocalModelRegistry",
    "NotFoundError",
    "RegistryError",
    "group_arn",
    "package_arn",
]
