"""Deploy an approved model package to a SageMaker real-time endpoint.

create_model (from the model package, so exactly the approved containers run)
-> create_endpoint_config -> create_endpoint the first time, update_endpoint
afterwards with a blue/green deployment: SageMaker starts the new fleet,
shifts traffic, watches the CloudWatch alarms for a baking period and rolls
back automatically if one fires; the old fleet serves until then.

Before any of that, four-eyes: an approval by the principal that created the
package (``CreatedBy`` against ``LastModifiedBy``, see
``pipelines.model.registry.principals``) is refused, the package is reset to
``PendingManualApproval`` and the failures topic is notified.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.core.notifications import FAILURES_TOPIC, Notifier, SnsNotifier
from pipelines.model.registry import PENDING
from pipelines.model.registry.principals import self_approval
from pipelines.serving.deploy.backend import (
    FAILED,
    IN_SERVICE,
    REFUSED,
    ROLLED_BACK,
    SKIPPED,
    UPDATING,
    DeploymentResult,
)

DEFAULT_ENDPOINT_NAME = "fraud-detection"
DEFAULT_INSTANCE_TYPE = "ml.m5.large"
VARIANT_NAME = "AllTraffic"
PACKAGE_TAG = "fraudops:model-package-arn"
MAX_APPROVAL_DESCRIPTION = 1024  # SageMaker's limit on ApprovalDescription
# Endpoint tags recording the deployment in flight, so that whoever looks at the
# endpoint later (an endpoint state-change event, a CodePipeline re-invocation)
# knows which config was meant to win and whether its outcome was already acted on.
TARGET_CONFIG_TAG = "fraudops:target-endpoint-config"
TARGET_PACKAGE_TAG = "fraudops:target-model-package-arn"
SETTLED_CONFIG_TAG = "fraudops:settled-endpoint-config"
# Endpoint statuses from which SageMaker will still move on by itself.
TRANSITIONAL_STATUSES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})


def default_alarm_names(endpoint_name: str) -> list[str]:
    """Alarm names infra/ creates for the endpoint (5xx errors, model latency)."""
    return [f"{endpoint_name}-invocation-5xx-errors", f"{endpoint_name}-model-latency"]


def _resource_name(*parts: str) -> str:
    """SageMaker names: alphanumerics and hyphens, at most 63 characters."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", "-".join(parts)).strip("-")
    return name[-63:].lstrip("-")


def _is_missing_endpoint(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code == "ValidationException" and "Could not find endpoint" in str(error)


def _is_client_error(error: Exception) -> bool:
    """An error SageMaker answered with (as opposed to a bug in this code)."""
    return "Error" in getattr(error, "response", {})


def _failures_notifier() -> Notifier | None:
    topic = os.environ.get("FAILURES_TOPIC_ARN")
    return SnsNotifier({FAILURES_TOPIC: topic}) if topic else None


@dataclass
class SageMakerEndpointBackend:
    """Blue/green deployments of model packages to one SageMaker endpoint."""

    client: Any
    execution_role_arn: str
    endpoint_name: str = DEFAULT_ENDPOINT_NAME
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    alarm_names: list[str] = field(default_factory=list)
    traffic_routing: str = "ALL_AT_ONCE"
    canary_percent: int = 10
    wait_interval_seconds: int = 300
    termination_wait_seconds: int = 300
    notifier: Notifier | None = None
    name: str = "aws"

    @classmethod
    def from_environment(cls, client: Any = None) -> SageMakerEndpointBackend:
        """Configuration of the deploy Lambda (see docs/CONTRACTS.md)."""
        import boto3

        endpoint = os.environ.get("ENDPOINT_NAME", DEFAULT_ENDPOINT_NAME)
        role = os.environ.get("EXECUTION_ROLE_ARN")
        if not role:
            raise RuntimeError("EXECUTION_ROLE_ARN is not set for the deploy function")
        alarms = os.environ.get("ROLLBACK_ALARM_NAMES")
        return cls(
            client=client or boto3.client("sagemaker"),
            execution_role_arn=role,
            endpoint_name=endpoint,
            instance_type=os.environ.get("ENDPOINT_INSTANCE_TYPE", DEFAULT_INSTANCE_TYPE),
            instance_count=int(os.environ.get("ENDPOINT_INSTANCE_COUNT", "1")),
            alarm_names=[a.strip() for a in alarms.split(",") if a.strip()]
            if alarms is not None
            else default_alarm_names(endpoint),
            traffic_routing=os.environ.get("TRAFFIC_ROUTING", "ALL_AT_ONCE"),
            notifier=_failures_notifier(),
        )

    def deployment_config(self) -> dict[str, Any]:
        """Blue/green policy with alarm-driven automatic rollback."""
        routing: dict[str, Any] = {
            "Type": self.traffic_routing,
            "WaitIntervalInSeconds": self.wait_interval_seconds,
        }
        if self.traffic_routing == "CANARY":
            routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": self.canary_percent}
        config: dict[str, Any] = {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": self.termination_wait_seconds,
            }
        }
        if self.alarm_names:
            config["AutoRollbackConfiguration"] = {
                "Alarms": [{"AlarmName": name} for name in self.alarm_names]
            }
        return config

    def current(self) -> dict[str, Any] | None:
        try:
            endpoint = self.client.describe_endpoint(EndpointName=self.endpoint_name)
        except Exception as exc:
            if _is_missing_endpoint(exc):
                return None
            raise
        return {
            "endpoint_name": endpoint["EndpointName"],
            "endpoint_arn": endpoint.get("EndpointArn"),
            "status": endpoint["EndpointStatus"],
            "endpoint_config_name": endpoint.get("EndpointConfigName"),
            "failure_reason": endpoint.get("FailureReason", ""),
        }

    def skip(self, package: dict[str, Any], reason: str) -> DeploymentResult:
        return DeploymentResult(
            status=SKIPPED,
            model_package_arn=package["ModelPackageArn"],
            version=package.get("ModelPackageVersion"),
            endpoint_name=self.endpoint_name,
            message=reason,
        )

    def refuse_self_approval(
        self, package: dict[str, Any], event: dict[str, Any] | None = None
    ) -> DeploymentResult | None:
        """Refuse an approval that broke four-eyes: reset the package to pending and notify.

        Returns None when a different principal approved (deploy may go on),
        else the Refused result. The reset and the notification are best
        effort in the sense that a failure of either is reported in the
        result and the notification; the deployment never happens either way.
        """
        why = self_approval(package, event)
        if why is None:
            return None
        arn = package["ModelPackageArn"]
        message = f"not deployed: {why}"
        try:
            self.client.update_model_package(
                ModelPackageArn=arn,
                ModelApprovalStatus=PENDING,
                ApprovalDescription=f"reset by deploy-on-approval: {why}"[
                    :MAX_APPROVAL_DESCRIPTION
                ],
            )
            message += f"; reset to {PENDING}"
        except Exception as exc:
            if not _is_client_error(exc):
                raise
            message += f"; could NOT reset it to {PENDING}: {exc}"
        version = package.get("ModelPackageVersion")
        self._notify(
            package,
            f"Model version {version} approval refused (four-eyes): not deployed",
            REFUSED,
            message,
        )
        return DeploymentResult(
            status=REFUSED,
            model_package_arn=arn,
            version=version,
            endpoint_name=self.endpoint_name,
            message=message,
        )

    def deploy(self, package: dict[str, Any]) -> DeploymentResult:
        """Create the model and endpoint config, then create or update the endpoint."""
        return self.start_deployment(package)[0]

    def start_deployment(self, package: dict[str, Any]) -> tuple[DeploymentResult, str]:
        """Start deploying ``package``; return the result so far and the new config's name.

        An update SageMaker refuses never touches the endpoint, so the previous
        config keeps serving: that is reported (and notified) as a rollback.
        """
        arn = package["ModelPackageArn"]
        version = package.get("ModelPackageVersion")
        config_name = self._create_model_and_config(arn, version)
        current = self.current()
        if current is None:
            self.client.create_endpoint(
                EndpointName=self.endpoint_name,
                EndpointConfigName=config_name,
                Tags=[{"Key": PACKAGE_TAG, "Value": arn}],
            )
            action = "creating"
        else:
            try:
                self.client.update_endpoint(
                    EndpointName=self.endpoint_name,
                    EndpointConfigName=config_name,
                    DeploymentConfig=self.deployment_config(),
                )
            except Exception as exc:
                if not _is_client_error(exc):
                    raise
                reason = f"SageMaker refused the update: {exc}"
                return self._failed(package, config_name, current, reason), config_name
            action = "blue/green update to"
        result = DeploymentResult(
            status=UPDATING,
            model_package_arn=arn,
            version=version,
            endpoint_name=self.endpoint_name,
            message=f"{action} endpoint {self.endpoint_name} with {config_name}",
        )
        return result, config_name

    def _create_model_and_config(self, arn: str, version: int | None) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        model_name = _resource_name(self.endpoint_name, f"v{version}", stamp)
        tags = [{"Key": PACKAGE_TAG, "Value": arn}]
        self.client.create_model(
            ModelName=model_name,
            PrimaryContainer={"ModelPackageName": arn},
            ExecutionRoleArn=self.execution_role_arn,
            Tags=tags,
        )
        self.client.create_endpoint_config(
            EndpointConfigName=model_name,
            ProductionVariants=[
                {
                    "VariantName": VARIANT_NAME,
                    "ModelName": model_name,
                    "InstanceType": self.instance_type,
                    "InitialInstanceCount": self.instance_count,
                }
            ],
            Tags=tags,
        )
        return model_name

    def outcome(self, package: dict[str, Any], config_name: str) -> DeploymentResult:
        """Where the deployment of ``package`` as ``config_name`` stands now.

        Still moving -> Updating; serving the new config -> InService; settled
        on another config -> RolledBack (the alarms or a failed fleet made
        SageMaker return to the previous one); endpoint failed -> Failed.
        Terminal failures are notified once per call.
        """
        current = self.current()
        arn = package["ModelPackageArn"]
        version = package.get("ModelPackageVersion")
        if current is None:
            return self._failed(package, config_name, None, "the endpoint no longer exists")
        status = current["status"]
        if status in TRANSITIONAL_STATUSES:
            return DeploymentResult(
                status=UPDATING,
                model_package_arn=arn,
                version=version,
                endpoint_name=self.endpoint_name,
                message=f"endpoint {self.endpoint_name} is {status} towards {config_name}",
            )
        if status == "InService" and current["endpoint_config_name"] == config_name:
            return DeploymentResult(
                status=IN_SERVICE,
                model_package_arn=arn,
                version=version,
                endpoint_name=self.endpoint_name,
                message=f"endpoint {self.endpoint_name} serves {config_name}",
            )
        if status == "InService":
            # SageMaker returned the endpoint to its previous config: an alarm fired
            # during baking or the new fleet never became healthy.
            reason = current["failure_reason"] or "SageMaker rolled the endpoint back"
        else:
            reason = current["failure_reason"] or f"the endpoint ended {status}"
        return self._failed(package, config_name, current, reason)

    def _failed(
        self,
        package: dict[str, Any],
        config_name: str,
        current: dict[str, Any] | None,
        reason: str,
    ) -> DeploymentResult:
        """RolledBack if the endpoint still serves its previous config, else Failed; notify."""
        version = package.get("ModelPackageVersion")
        serving = current and current["status"] == "InService"
        if serving:
            status = ROLLED_BACK
            message = (
                f"version {version} ({config_name}) failed: {reason}; "
                f"{current['endpoint_config_name']} keeps serving on {self.endpoint_name}"
            )
        else:
            status = FAILED
            message = f"version {version} ({config_name}) failed: {reason}; nothing serves"
        self._notify(
            package,
            f"Deployment of model version {version} to {self.endpoint_name} failed",
            status,
            message,
        )
        return DeploymentResult(
            status=status,
            model_package_arn=package["ModelPackageArn"],
            version=version,
            endpoint_name=self.endpoint_name,
            message=message,
        )

    def _notify(self, package: dict[str, Any], subject: str, status: str, message: str) -> None:
        """Tell the failures topic (the pipeline-failure message shape) if one is configured."""
        if self.notifier is None:
            return
        self.notifier.publish(
            FAILURES_TOPIC,
            subject,
            {
                "stage": "deploy",
                "execution": package["ModelPackageArn"],
                "step": self.endpoint_name,
                "status": status,
                "error": message,
                "log": f"CloudWatch /aws/sagemaker/Endpoints/{self.endpoint_name}",
            },
        )

    def record_target(self, package: dict[str, Any], config_name: str) -> None:
        """Tag the endpoint with the deployment in flight (read back by :meth:`pending`)."""
        self._tag_endpoint(
            {TARGET_CONFIG_TAG: config_name, TARGET_PACKAGE_TAG: package["ModelPackageArn"]}
        )

    def pending(self) -> tuple[str, str] | None:
        """(model package ARN, config name) of a deployment whose outcome is not acted on."""
        tags = self.deployment_tags()
        target = tags.get(TARGET_CONFIG_TAG)
        if not target or tags.get(SETTLED_CONFIG_TAG) == target:
            return None
        return tags[TARGET_PACKAGE_TAG], target

    def deployment_tags(self) -> dict[str, str]:
        """The endpoint's tags (target and settled deployment markers among them)."""
        current = self.current()
        if current is None:
            return {}
        tags = self.client.list_tags(ResourceArn=current["endpoint_arn"]).get("Tags", [])
        return {tag["Key"]: tag["Value"] for tag in tags}

    def mark_settled(self, config_name: str) -> None:
        """Record that the outcome of deploying ``config_name`` has been acted on."""
        self._tag_endpoint({SETTLED_CONFIG_TAG: config_name})

    def _tag_endpoint(self, tags: dict[str, str]) -> None:
        current = self.current()
        if current is None:
            raise RuntimeError(f"endpoint {self.endpoint_name} does not exist; cannot tag it")
        self.client.add_tags(
            ResourceArn=current["endpoint_arn"],
            Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )
