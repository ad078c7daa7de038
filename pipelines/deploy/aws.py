"""Deploy an approved model package to a SageMaker real-time endpoint.

create_model (from the model package, so exactly the approved containers run)
-> create_endpoint_config -> create_endpoint the first time, update_endpoint
afterwards with a blue/green deployment: SageMaker starts the new fleet,
shifts traffic, watches the CloudWatch alarms for a baking period and rolls
back automatically if one fires; the old fleet serves until then.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.deploy.backend import SKIPPED, UPDATING, DeploymentResult

DEFAULT_ENDPOINT_NAME = "fraud-detection"
DEFAULT_INSTANCE_TYPE = "ml.m5.large"
VARIANT_NAME = "AllTraffic"
PACKAGE_TAG = "fraudops:model-package-arn"


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
            "status": endpoint["EndpointStatus"],
            "endpoint_config_name": endpoint.get("EndpointConfigName"),
        }

    def skip(self, package: dict[str, Any], reason: str) -> DeploymentResult:
        return DeploymentResult(
            status=SKIPPED,
            model_package_arn=package["ModelPackageArn"],
            version=package.get("ModelPackageVersion"),
            endpoint_name=self.endpoint_name,
            message=reason,
        )

    def deploy(self, package: dict[str, Any]) -> DeploymentResult:
        """Create the model and endpoint config, then create or update the endpoint."""
        arn = package["ModelPackageArn"]
        version = package.get("ModelPackageVersion")
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
        if self.current() is None:
            self.client.create_endpoint(
                EndpointName=self.endpoint_name, EndpointConfigName=model_name, Tags=tags
            )
            action = "creating"
        else:
            self.client.update_endpoint(
                EndpointName=self.endpoint_name,
                EndpointConfigName=model_name,
                DeploymentConfig=self.deployment_config(),
            )
            action = "blue/green update to"
        return DeploymentResult(
            status=UPDATING,
            model_package_arn=arn,
            version=version,
            endpoint_name=self.endpoint_name,
            message=f"{action} endpoint {self.endpoint_name} with {model_name}",
        )
