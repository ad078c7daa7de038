"""Render the declared workflow for AWS: Step Functions ASL and AWS Data Pipeline.

One declaration (:data:`pipelines.workflow.declaration.FRAUD_WORKFLOW`), three
renderings: the local runner, a Step Functions state machine, and a Data
Pipeline definition for accounts still on that service (closed to new
customers). Steps without an AWS task (demo data, the demo approver) happen
elsewhere on AWS and are left out. Placeholders ``${Name}`` are filled by the
CloudFormation ``DefinitionSubstitutions`` or the caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipelines.workflow.declaration import AwsTask, Step, Workflow

NOTIFY_FUNCTION = "${FailureNotificationFunctionArn}"
FAILED_STATE = "WorkflowFailed"


def aws_steps(workflow: Workflow) -> list[Step]:
    """The steps that run as AWS tasks, in dependency order."""
    return [step for step in workflow.order() if step.aws is not None]


def to_state_machine(workflow: Workflow) -> dict[str, Any]:
    """Amazon States Language for ``workflow``: retries, catches, failure notification."""
    steps = aws_steps(workflow)
    states: dict[str, Any] = {}
    for index, step in enumerate(steps):
        after = steps[index + 1].name if index + 1 < len(steps) else None
        assert step.aws is not None
        states.update(_task_states(step, step.aws, after))
        states[_notify_name(step)] = _notify_state(workflow, step)
    states[FAILED_STATE] = {
        "Type": "Fail",
        "Error": "WorkflowStepFailed",
        "Cause": "a workflow step failed after its retries; see the failure notification",
    }
    return {
        "Comment": f"{workflow.name}: rendered from pipelines/workflow/declaration.py",
        "StartAt": steps[0].name,
        "States": states,
    }


def _task_states(step: Step, task: AwsTask, after: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Type": "Task",
        "Comment": step.description,
        "Resource": task.resource,
        "Parameters": task.parameters,
        "ResultPath": f"$.results.{_identifier(step.name)}",
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                   "Next": _notify_name(step)}],
    }
    if step.retry.max_attempts > 1:
        state["Retry"] = [
            {
                "ErrorEquals": ["States.ALL"],
                "IntervalSeconds": max(1, int(step.retry.interval_seconds)),
                "MaxAttempts": step.retry.max_attempts - 1,
                "BackoffRate": step.retry.backoff_rate,
            }
        ]
    if task.poll is None:
        _link(state, after)
        return {step.name: state}

    # No .sync integration: start, then wait / describe / choose until done.
    if "ClientRequestToken" not in task.parameters:
        state["Parameters"] = {**task.parameters, "ClientRequestToken.$": "States.UUID()"}
    wait, check, choose = (f"{step.name}-wait", f"{step.name}-check", f"{step.name}-done?")
    result = f"$.results.{_identifier(step.name)}"
    state["Next"] = wait
    poll = task.poll
    return {
        step.name: state,
        wait: {"Type": "Wait", "Seconds": poll["wait_seconds"], "Next": check},
        check: {
            "Type": "Task",
            "Resource": poll["resource"],
            "Parameters": {"PipelineExecutionArn.$": f"{result}.PipelineExecutionArn"},
            "ResultSelector": {
                "PipelineExecutionArn.$": "$.PipelineExecutionArn",
                "Status.$": poll["status_path"],
            },
            "ResultPath": result,
            "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 5,
                       "MaxAttempts": 3, "BackoffRate": 2.0}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                       "Next": _notify_name(step)}],
            "Next": choose,
        },
        choose: {
            "Type": "Choice",
            "Choices": [
                {"Variable": f"{result}.Status", "StringEquals": poll["succeeded"],
                 **({"Next": after} if after else {"Next": f"{step.name}-succeeded"})},
                *[
                    {"Variable": f"{result}.Status", "StringEquals": status,
                     "Next": _notify_name(step)}
                    for status in poll["failed"]
                ],
            ],
            "Default": wait,
        },
        **({} if after else {f"{step.name}-succeeded": {"Type": "Succeed"}}),
    }


def _notify_state(workflow: Workflow, step: Step) -> dict[str, Any]:
    """Invoke the failure-notification Lambda with the event it understands."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {
            "FunctionName": NOTIFY_FUNCTION,
            "Payload": {
                "source": "fraudops.workflow",
                "detail-type": "Workflow Step Failed",
                "detail": {
                    "workflow": workflow.name,
                    "execution.$": "$$.Execution.Id",
                    "step": step.name,
                    "error.$": "States.JsonToString($.error)",
                    "rollback": step.rollback,
                    "log": "Step Functions execution history",
                },
            },
        },
        "ResultPath": None,
        "Next": FAILED_STATE,
    }


def _link(state: dict[str, Any], after: str | None) -> None:
    if after:
        state["Next"] = after
    else:
        state["End"] = True


def _notify_name(step: Step) -> str:
    return f"notify-{step.name}-failed"


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


def to_data_pipeline(workflow: Workflow, *, log_uri: str, role: str, resource_role: str,
                     failure_topic_arn: str) -> list[dict[str, Any]]:
    """AWS Data Pipeline objects (``put_pipeline_definition`` shape) for ``workflow``."""
    objects: list[dict[str, Any]] = [
        _dp_object("Default", "Default", {
            "scheduleType": "ondemand",
            "failureAndRerunMode": "CASCADE",
            "role": role,
            "resourceRole": resource_role,
            "pipelineLogUri": log_uri,
        }),
        _dp_object("Worker", "Ec2Resource", {"terminateAfter": "6 Hours"}),
        _dp_object("FailureAlarm", "SnsAlarm", {
            "topicArn": failure_topic_arn,
            "subject": f"[fraudops] {workflow.name} failed at #{{node.name}}",
            "message": "#{node.errorMessage} (log: #{node.pipelineLogUri})",
            "role": role,
        }),
    ]
    previous: str | None = None
    for step in aws_steps(workflow):
        assert step.aws is not None
        fields: dict[str, Any] = {
            "maximumRetries": str(step.retry.max_attempts - 1),
            "onFail": {"ref": "FailureAlarm"},
        }
        if previous:
            fields["dependsOn"] = {"ref": previous}
        if step.aws.data_pipeline_type == "EmrActivity":
            jar_step: dict[str, Any] = step.aws.parameters["Step"]["HadoopJarStep"]  # type: ignore[index]
            fields["step"] = ",".join([jar_step["Jar"], *jar_step["Args"]])
            fields["runsOn"] = {"ref": "FeatureCluster"}
        else:
            fields["command"] = _cli_command(step.aws)
            fields["runsOn"] = {"ref": "Worker"}
        objects.append(_dp_object(step.name, step.aws.data_pipeline_type, fields))
        previous = step.name
    if any(s.aws and s.aws.data_pipeline_type == "EmrActivity" for s in workflow.steps):
        objects.append(_dp_object("FeatureCluster", "EmrCluster", {
            "releaseLabel": "emr-7.5.0", "applications": "spark", "terminateAfter": "4 Hours"}))
    return objects


def _cli_command(task: AwsTask) -> str:
    """The AWS CLI call equivalent to a Step Functions integration."""
    match = re.match(r"arn:aws:states:::(?:aws-sdk:)?(\w+):(\w+)", task.resource)
    if not match:
        raise ValueError(f"cannot derive a CLI command from resource {task.resource!r}")
    service, action = match.groups()
    operation = re.sub(r"(?<!^)(?=[A-Z])", "-", action).lower()
    parameters = {k: v for k, v in task.parameters.items() if not k.endswith(".$")}
    payload = json.dumps(parameters, separators=(",", ":"))
    return f"aws {service} {operation} --cli-input-json '{payload}'"


def _dp_object(object_id: str, object_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    dp_fields = [{"key": "type", "stringValue": object_type}]
    for key, value in fields.items():
        if isinstance(value, dict) and "ref" in value:
            dp_fields.append({"key": key, "refValue": value["ref"]})
        else:
            dp_fields.append({"key": key, "stringValue": str(value)})
    return {"id": object_id, "name": object_id, "fields": dp_fields}


def substitute(definition: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Fill ``${Name}`` placeholders (as CloudFormation DefinitionSubstitutions does)."""
    text = json.dumps(definition)
    missing = sorted(set(re.findall(r"\$\{(\w+)\}", text)) - set(values))
    if missing:
        raise KeyError(f"no value for placeholders: {', '.join(missing)}")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return json.loads(text)
