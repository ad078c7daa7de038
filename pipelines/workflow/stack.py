"""Deploy the CloudFormation stacks of one environment (dev, staging, prod).

``package`` builds what the templates reference (the Lambda bundle, the Glue
and EMR entry scripts, the rendered workflow state machine, the project source
CodeBuild's model build installs with ``pip install .``) and uploads it
under ``code/<version>/`` of the artifacts bucket; ``deploy`` creates or
updates the stacks in dependency order and waits for each.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.code import BUNDLED_UNITS, import_root, unit_dir
from pipelines.core.fileio import atomic_path, write_text_atomically
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
# The CodeBuild model build (infra/cicd.yaml) checks out source.zip and runs
# codebuild-buildspec.yml: `pip install .` needs these files beside the packages
# and the folders setup.py bundles into the package.
SOURCE_FILES: tuple[str, ...] = (
    "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "codebuild-buildspec.yml",
)
SOURCE_PACKAGES: tuple[str, ...] = ("pipelines", "lambdas", "companions")


@dataclass(frozen=True)
class Environment:
    name: str
    project: str = "fraudops"
    code_version: str = "latest"

    def stack_name(self, stack: str) -> str:
        return f"{self.project}-{self.name}-{stack}"


def _tree(folder: Path, name: str, pattern: str = "*") -> Iterator[tuple[Path, str]]:
    """(file, name in the archive) for ``folder``'s files, without caches or bundled copies."""
    for path in sorted(folder.rglob(pattern)):
        relative = path.relative_to(folder)
        if path.is_file() and path.suffix != ".pyc" and not (
                {"__pycache__", "_bundled"} & set(relative.parts)):
            yield path, f"{name}/{relative.as_posix()}"


def _write_zip(target: Path, files: Iterable[tuple[Path, str]]) -> Path:
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in files:
            archive.write(path, name)
    return target


def build_lambda_bundle(out_dir: Path) -> Path:
    """Zip the handlers and the ``pipelines`` package (sources only, no caches)."""
    root = import_root()
    files = [item for package in LAMBDA_PACKAGES for item in _tree(root / package, package, "*.py")]
    return _write_zip(out_dir / "lambda.zip", files)


def build_source_archive(out_dir: Path) -> Path:
    """``source.zip``: the project as CodeBuild's model build needs it for ``pip install .``.

    Made from a source checkout: an installed package has no ``setup.py`` to ship.
    """
    root = import_root()
    missing = [name for name in SOURCE_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the CodeBuild source (source.zip) is made from a source checkout, but {root} has "
            f"no {', '.join(missing)}: run `fraudops infra deploy` from a clone of the repository"
        )
    files = [(root / name, name) for name in SOURCE_FILES]
    files += [item for package in SOURCE_PACKAGES for item in _tree(root / package, package)]
    files += [item for unit in BUNDLED_UNITS for item in _tree(unit_dir(unit), unit)]
    return _write_zip(out_dir / "source.zip", files)


def build_artifacts(out_dir: Path) -> dict[str, Path]:
    """Everything ``code/<version>/`` holds, keyed by its key under that prefix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state_machine = out_dir / "workflow.asl.json"
    write_text_atomically(state_machine, json.dumps(to_state_machine(FRAUD_WORKFLOW), indent=2))
    artifacts = {"lambda.zip": build_lambda_bundle(out_dir), "workflow.asl.json": state_machine,
                 "source.zip": build_source_archive(out_dir)}
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
