"""Every AWS call the code makes is allowed by the role that makes it.

The code behind each role (a Lambda handler, the CodeBuild model build, the
state machine) is scanned statically: its modules, following imports inside
the repository, and every method call whose name is an operation of an AWS
service the project uses. Each such operation must be granted to the role.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
from functools import cache
from pathlib import Path

import botocore.session
import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {  # botocore service name -> IAM action prefix
    "s3": "s3", "sns": "sns", "sqs": "sqs", "dynamodb": "dynamodb", "sagemaker": "sagemaker",
    "sagemaker-runtime": "sagemaker", "glue": "glue", "secretsmanager": "secretsmanager",
    "kinesis": "kinesis", "lambda": "lambda", "athena": "athena", "backup": "backup",
}
# What each role runs: entry modules (or the rendered state machine).
ROLE_CODE = {
    ("ml.yaml", "FailureNotificationRole"): ["lambdas.failure_notification.handler"],
    ("ml.yaml", "AlertRole"): ["lambdas.alert.handler"],
    ("ml.yaml", "DeployRole"): ["lambdas.deploy.handler", "pipelines.serving.deploy.aws"],
    ("ml.yaml", "StreamScoringRole"): ["lambdas.stream_scoring.handler"],
    ("cicd.yaml", "BuildRole"): ["pipelines.cli.run_pipeline"],
    ("catalog.yaml", "EtlRole"): ["companions.glue.transactions_etl"],
    # fraudops report --backend aws, audit checkpoint, case ... --backend aws
    ("catalog.yaml", "ComplianceRole"): [
        "pipelines.analytics.reports.data", "pipelines.analytics.reports.output",
        "pipelines.compliance.records_bucket", "pipelines.serving.alerts.lake_queue"],
}
# Calls a role's modules hold that the role never makes: (role, module, action) -> why.
NOT_RUN_BY_ROLE = {
    ("ComplianceRole", "pipelines.data.lake.athena_client", f"athena:{operation}"):
        "AthenaRunner.sync_named_queries, run by the platform's `athena create-named-queries`"
    for operation in ("CreateNamedQuery", "UpdateNamedQuery", "ListNamedQueries",
                      "BatchGetNamedQuery")
}
# Modules the scan reaches by import that never run under the role on AWS
# (they serve the local backend or CLI subcommands).
LOCAL_ONLY = {
    "pipelines.serving.deploy.local", "pipelines.model.registry.local",
    "pipelines.serving.endpoint.server",
    "pipelines.compliance.vault", "pipelines.cli.commands", "pipelines.model.executor",
    "pipelines.fraud.definition",  # renders under moto; the aws path never calls it
    "pipelines.fraud.local_run",  # the local executor's run store, not SageMaker
}
# Same-named methods that are not AWS calls: (module, action) -> what it really is.
NOT_AWS_CALLS = {
    ("pipelines.data.ingest.run", "sns:Publish"): "writer.publish renames staged files into place",
    ("pipelines.model.executor.status_events", "sns:Publish"): "the local event bus",
    ("pipelines.data.ingest.sources", "sagemaker:Search"): "re.Pattern.search",
    ("pipelines.data.features.build", "sns:Publish"): "store.publish renames the staged table",
}
# API operations whose IAM action has another name.
IAM_ACTION_OF = {
    "lambda:Invoke": "lambda:InvokeFunction",
    "elasticmapreduce:AddStep": "elasticmapreduce:AddJobFlowSteps",  # Step Functions' name
    "sqs:SendMessageBatch": "sqs:SendMessage",  # batch calls need the single-call action
    # A transaction is authorised per item; the stream commits Puts only.
    "dynamodb:TransactWriteItems": "dynamodb:PutItem",
}


@cache
def _operations() -> dict[str, set[str]]:
    """snake_case operation name -> IAM actions it maps to, over the project's services."""
    session = botocore.session.get_session()
    found: dict[str, set[str]] = {}
    for service, prefix in SERVICES.items():
        model = session.get_service_model(service)
        for name in model.operation_names:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
            action = f"{prefix}:{name}"
            found.setdefault(snake, set()).add(IAM_ACTION_OF.get(action, action))
    return found


def _module_path(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _closure(entries: list[str]) -> set[str]:
    """Repository modules reachable from ``entries`` by import."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        local_only = any(module == m or module.startswith(f"{m}.") for m in LOCAL_ONLY)
        if module in seen or local_only or _module_path(module) is None:
            continue
        seen.add(module)
        tree = ast.parse(_module_path(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
    return seen


def _used_actions(modules: set[str]) -> dict[str, str]:
    """IAM action -> the module that calls it."""
    operations = _operations()
    used: dict[str, str] = {}
    for module in modules:
        tree = ast.parse(_module_path(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                for action in operations.get(node.func.attr, ()):
                    if (module, action) not in NOT_AWS_CALLS:
                        used.setdefault(IAM_ACTION_OF.get(action, action), module)
    return used


def _granted(template: str, role: str) -> list[str]:
    parsed, _ = decode(str(ROOT / "infra" / template))
    actions = []
    for policy in parsed["Resources"][role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Allow":
                value = statement["Action"]
                actions += value if isinstance(value, list) else [value]
    return actions


def _allowed(action: str, granted: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), g.lower()) for g in granted)


@pytest.mark.parametrize("role", sorted(ROLE_CODE), ids=lambda r: r[1])
def test_every_call_is_granted(role):
    template, name = role
    modules = _closure(ROLE_CODE[role])
    assert modules, f"no code found for {name}"
    granted = _granted(template, name)
    used = {action: module for action, module in _used_actions(modules).items()
            if (name, module, action) not in NOT_RUN_BY_ROLE}
    # Which service a generic name like describe_endpoint belongs to is decided
    # by the role's own grants when more than one service offers it.
    missing = {
        action: module for action, module in used.items()
        if not _allowed(action, granted)
        and not any(_allowed(other, granted) for other in _siblings(action, used))
    }
    assert not missing, f"{name} lacks: {missing}"


def _siblings(action: str, used: dict[str, str]) -> set[str]:
    """Other services' actions reached through the same snake_case call name."""
    return {other for actions in _operations().values() if action in actions
            for other in actions} - {action}


def test_state_machine_role_grants_every_task_it_runs():
    from pipelines.workflow.declaration import FRAUD_WORKFLOW
    from pipelines.workflow.render import to_state_machine

    granted = _granted("workflow.yaml", "StateMachineRole")
    for state in to_state_machine(FRAUD_WORKFLOW)["States"].values():
        resource = state.get("Resource", "")
        match = re.match(r"arn:aws:states:::(?:aws-sdk:)?([\w-]+):(\w+)", resource)
        if not match:
            continue
        service, operation = match.groups()
        prefix = {"elasticmapreduce": "elasticmapreduce"}.get(service, service)
        action = f"{prefix}:{operation[0].upper()}{operation[1:]}"
        action = IAM_ACTION_OF.get(action, action)
        assert _allowed(action, granted), f"state machine calls {action} without a grant"


_JOB_ACTIONS = {"Processing": "ProcessingJob", "Training": "TrainingJob",
                "Tuning": "HyperParameterTuningJob"}
# What SageMaker Pipelines does with the pipeline's execution role for each step
# type: no repository code makes these calls, the service does, so the scan above
# cannot see them; the rendered definition says which step types there are.
STEP_ACTIONS: dict[str, set[str]] = {
    **{kind: {f"sagemaker:{verb}{job}" for verb in ("Create", "Describe", "Stop")}
       | {"sagemaker:AddTags"} for kind, job in _JOB_ACTIONS.items()},
    "RegisterModel": {"sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage"},
    "Condition": set(), "Fail": set(),
}
# A tuning job's trials are training jobs, and the step reads their summaries.
STEP_ACTIONS["Tuning"] |= STEP_ACTIONS["Training"] | {
    "sagemaker:ListTrainingJobsForHyperParameterTuningJob"}


def _step_types(steps: list[dict]) -> set[str]:
    found = set()
    for step in steps:
        found.add(step["Type"])
        arguments = step.get("Arguments", {})
        found |= _step_types(arguments.get("IfSteps", []) + arguments.get("ElseSteps", []))
    return found


def test_the_pipeline_role_grants_exactly_what_its_step_types_need(tmp_path):
    import json

    from pipelines.fraud.definition import render_pipeline

    definition = json.loads(render_pipeline({"region": "us-east-1"},
                                            code_store_dir=tmp_path).definition)
    types = _step_types(definition["Steps"])
    assert "Tuning" in types and types <= set(STEP_ACTIONS), types
    needed = set().union(*(STEP_ACTIONS[t] for t in types))
    granted = {a for a in _granted("ml.yaml", "SageMakerExecutionRole")
               if a.startswith("sagemaker:")}
    assert needed - granted == set(), "the pipeline role lacks these"
    assert granted - needed == set(), "granted but no step type of the pipeline needs it"


def test_the_scan_finds_calls():
    """Guard against a scan that silently sees nothing (it would pass everything)."""
    used = _used_actions(_closure(["lambdas.alert.handler"]))
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "sns:Publish"} <= set(used)
    deploy_actions = _used_actions(_closure(["pipelines.serving.deploy.aws"]))
    assert "sagemaker:CreateEndpointConfig" in deploy_actions


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
