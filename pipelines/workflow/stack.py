"""Deploy the CloudFormation stacks of one environment (dev, staging, prod).

The artifacts the templates reference are built by
:mod:`pipelines.workflow.artifacts` and uploaded under ``code/<version>/`` of
the artifacts bucket (:func:`upload_artifacts`) once the storage stack exists;
:func:`deploy_stack` creates or updates each stack in :data:`STACK_ORDER` and
waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.code import unit_dir
from pipelines.core.params import DEFAULT_LABEL_DELAY_DAYS

# Stacks in the order they must exist (later ones import earlier outputs: the
# workflow's backup step uses the backup stack's vault and role).
STACK_ORDER: tuple[str, ...] = ("storage", "catalog", "ml", "backup", "workflow", "cicd")


@dataclass(frozen=True)
class Environment:
    name: str
    project: str = "fraudops"
    code_version: str = "latest"

    def stack_name(self, stack: str) -> str:
        return f"{self.project}-{self.name}-{stack}"


def upload_artifacts(
    s3: Any, bucket: str, env: Environment, artifacts: dict[str, Path]
) -> list[str]:
    """Upload each artifact under ``code/<version>/``; returns the keys written."""
    keys = []
    for key, path in sorted(artifacts.items()):
        s3.upload_file(str(path), bucket, f"code/{env.code_version}/{key}")
        keys.append(f"code/{env.code_version}/{key}")
    return keys


def deploy_stack(
    cloudformation: Any,
    env: Environment,
    stack: str,
    parameters: dict[str, str],
    wait: Callable[[str, str], None] | None = None,
) -> str:
    """Create the stack or update it; "no updates" is success, not an error."""
    name = env.stack_name(stack)
    body = (unit_dir("infra") / f"{stack}.yaml").read_text()
    cfn_parameters = [
        {"ParameterKey": k, "ParameterValue": v}
        for k, v in {"Environment": env.name, "ProjectName": env.project, **parameters}.items()
    ]
    request = {
        "StackName": name,
        "TemplateBody": body,
        "Parameters": cfn_parameters,
        "Capabilities": ["CAPABILITY_NAMED_IAM"],
        "Tags": [
            {"Key": "project", "Value": env.project},
            {"Key": "environment", "Value": env.name},
        ],
    }
    if _stack_exists(cloudformation, name):
        try:
            cloudformation.update_stack(**request)
        except cloudformation.exceptions.ClientError as exc:
            if "No updates are to be performed" in str(exc):
                return "unchanged"
            raise
        action = "updated"
    else:
        cloudformation.create_stack(**request, EnableTerminationProtection=env.name == "prod")
        action = "created"
    waiter = wait or (
        lambda kind, stack_name: cloudformation.get_waiter(f"stack_{kind}_complete").wait(
            StackName=stack_name
        )
    )
    waiter("create" if action == "created" else "update", name)
    return action


def _stack_exists(cloudformation: Any, name: str) -> bool:
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except cloudformation.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return any(s["StackStatus"] != "DELETE_COMPLETE" for s in stacks)


def stack_parameters(env: Environment, stack: str, extra: dict[str, str]) -> dict[str, str]:
    """Parameters a stack declares, taken from the environment and ``extra``.

    Run parameters with a project-wide default (the label delay) come from
    ``pipelines.core.params``, never from a template default of their own.
    """
    declared = _declared_parameters(stack)
    values = {"CodeVersion": env.code_version,
              "LabelDelayDays": str(DEFAULT_LABEL_DELAY_DAYS), **extra}
    return {k: v for k, v in values.items() if k in declared}


def _declared_parameters(stack: str) -> set[str]:
    import yaml

    class TemplateLoader(yaml.SafeLoader):
        """Reads CloudFormation short-form tags (!Ref, !Sub ...) as plain values."""

    TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((unit_dir("infra") / f"{stack}.yaml").read_text(), Loader=TemplateLoader)
    return set(template.get("Parameters", {}))
