"""The one interface the deploy handler needs from an endpoint backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

# Outcomes of one deployment attempt.
IN_SERVICE = "InService"  # the new version serves traffic
UPDATING = "Updating"  # AWS: accepted, SageMaker is shifting traffic blue/green
ROLLED_BACK = "RolledBack"  # the new version failed; the previous one keeps serving
FAILED = "Failed"  # the new version failed and nothing serves
SKIPPED = "Skipped"  # not deployed (e.g. the decision was a rejection)
REFUSED = "Refused"  # not deployed: the approval broke four-eyes; the package is pending again


@dataclass(frozen=True)
class DeploymentResult:
    """What a deployment attempt did; JSON-able for Lambda responses and the CLI."""

    status: str
    model_package_arn: str
    version: int | None = None
    endpoint_url: str | None = None
    endpoint_name: str | None = None
    message: str = ""
    deployment_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in (IN_SERVICE, UPDATING, SKIPPED)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EndpointBackend(Protocol):
    """Puts an approved model package behind the endpoint."""

    name: str

    def deploy(self, package: dict[str, Any]) -> DeploymentResult:
        """Deploy the described package (a DescribeModelPackage response)."""
        ...

    def skip(self, package: dict[str, Any], reason: str) -> DeploymentResult:
        """Record that this package is not deployed, and why."""
        ...

    def current(self) -> dict[str, Any] | None:
        """What the endpoint serves now, or None."""
        ...
