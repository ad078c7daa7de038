"""Deploy the CloudFormation stacks of one environment (dev, staging, prod).

``package`` builds what the templates reference (the Lambda bundle, the Glue
and EMR entry scripts, the rendered workflow state machine) and uploads it
under ``code/<version>/`` of the artifacts bucket; ``deploy`` creates or
updates the stacks in dependency order and waits for each.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.code import import_root, unit_dir
from pipelines.core.fileio import atomic_path
from pipelines.workflow.declaration import FRAUD_WORKFLOW
from pipelines.workflow.render import to_state_machine

# Stacks in the order they must exist (later ones import earlier outputs).
STACK_ORDER: tuple[str, ...] = ("storage", "catalog", "ml", "workflow", "backup", "cicd")

# Code the Lambda functions import: handlers plus the package they call into.
LAMBDA_PACKAGES: tuple[str, ...] = ("lambdas", "pipelines")
ENTRY_SCRIPTS: tuple[str, ...] = (
    "companions/glue/transactions_etl.py",
    "companions/emr/feature_job.py",
)


@dataclass(frozen=True)
class Environment:
    name: str
    project: str = "fraudops"
    code_version: str = "latest"

    def stack_name(self, stack: str) -> str:
        return f"{self.project}-{self.name}-{stack}"


def build_lambda_bundle(out_dir: Path) -> Path:
    """Zip the handlers and the ``pipelines`` package (sources only, no caches)."""
    bundle = out_dir / "lambda.zip"
    with atomic_path(bundle) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in LAMBDA_PACKAGES:
            for path in sorted((import_root() / package).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(import_root()).as_posix())
    return bundle


def build_artifacts(out_dir: Path) -> dict[str, Path]:
    """Everything ``code/<version>/`` holds, keyed by its key under that prefix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state_machine = out_dir / "workflow.asl.json"
    state_machine.write_text(json.dumps(to_state_machine(FRAUD_WORKFLOW), indent=2))
    artifacts = {"lambda.zip": build_lambda_bundle(out_dir), "workflow.asl.json": state_machine}
    for script in ENTRY_SCRIPTS:
        if (import_root() / script).exists():
            artifacts[script] = import_root() / script
    return artifacts


def upload_artifacts(s3: Any, bucket: str, env: Environment, artifacts: dict[str, Path]) -> None:
    for key, path in sorted(artifacts.items()):
        s3.upload_file(str(path), bucket, f"code/{env.code_version}/{key}")


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
    """Parameters a stack declares, taken from the environment and ``extra``."""
    declared = _declared_parameters(stack)
    values = {"CodeVersion": env.code_version, **extra}
    return {k: v for k, v in values.items() if k in declared}


def _declared_parameters(stack: str) -> set[str]:
    import yaml

    class TemplateLoader(yaml.SafeLoader):
        """Reads CloudFormation short-form tags (!Ref, !Sub ...) as plain values."""

    TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((unit_dir("infra") / f"{stack}.yaml").read_text(), Loader=TemplateLoader)
    return set(template.get("Parameters", {}))
