"""Render the declared workflow for AWS as a Step Functions state machine.

One declaration (:data:`pipelines.workflow.declaration.FRAUD_WORKFLOW`), two
renderings: the local runner and this state machine. Steps without an AWS
task (demo data, the demo approver) happen elsewhere on AWS and are left out.
Placeholders ``${Name}`` are filled by the workflow stack's
``DefinitionSubstitutions`` (or :func:`substitute`).

Every Task state retries per its step's policy and catches every error into
that step's failure notification, which ends the execution as failed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipelines.workflow.declaration import RUN_DAY, AwsTask, Poll, RetryPolicy, Step, Workflow

NOTIFY_FUNCTION = "${FailureNotificationFunctionArn}"
FAILED_STATE = "WorkflowFailed"
CONFIGURE_CHOICE, CONFIGURE = "run-day-given?", "configure-run-day"
# Reads (lookups, status polls) are cheap and idempotent: retry throttling freely.
READ_RETRY = RetryPolicy(max_attempts=4, interval_seconds=5.0, backoff_rate=2.0)


def aws_steps(workflow: Workflow) -> list[Step]:
    """The steps that run as AWS tasks, in dependency order."""
    return [step for step in workflow.order() if step.aws is not None]


def to_state_machine(workflow: Workflow) -> dict[str, Any]:
    """Amazon States Language for ``workflow``: retries, catches, failure notification."""
    steps = aws_steps(workflow)
    states: dict[str, Any] = _configure_states(_first_state(steps[0]))
    for index, step in enumerate(steps):
        after = _first_state(steps[index + 1]) if index + 1 < len(steps) else None
        assert step.aws is not None
        states.update(_step_states(step, step.aws, after))
        states[_notify_name(step)] = _notify_state(workflow, step)
    states[FAILED_STATE] = {
        "Type": "Fail",
        "Error": "WorkflowStepFailed",
        "Cause": "a workflow step failed after its retries; see the failure notification",
    }
    return {
        "Comment": f"{workflow.name}: rendered from pipelines/workflow/declaration.py",
        "StartAt": CONFIGURE_CHOICE,
        "States": states,
    }


def _configure_states(first: str) -> dict[str, Any]:
    """``$.run.day``: the execution input's, else the UTC day the execution started."""
    path = RUN_DAY
    return {
        CONFIGURE_CHOICE: {
            "Type": "Choice",
            "Choices": [{"Variable": path, "IsPresent": True, "Next": first}],
            "Default": CONFIGURE,
        },
        CONFIGURE: {
            "Type": "Pass",
            "Parameters": {
                "day.$": "States.ArrayGetItem(States.StringSplit($$.Execution.StartTime, 'T'), 0)"
            },
            "ResultPath": path.rsplit(".", 1)[0],
            "Next": first,
        },
    }


def _first_state(step: Step) -> str:
    assert step.aws is not None
    return _lookup_name(step, step.aws.lookups[0].name) if step.aws.lookups else step.name


def _result_path(step: Step) -> str:
    return f"$.results.{_identifier(step.name)}"


def _task(step: Step, resource: str, parameters: dict[str, Any], result_path: str,
          retry: RetryPolicy, selector: dict[str, str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Type": "Task",
        "Comment": step.description,
        "Resource": resource,
        "Parameters": parameters,
        "ResultPath": result_path,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                   "Next": _notify_name(step)}],
    }
    if selector:
        state["ResultSelector"] = selector
    if retry.max_attempts > 1:
        state["Retry"] = [{
            "ErrorEquals": ["States.ALL"],
            "IntervalSeconds": max(1, int(retry.interval_seconds)),
            "MaxAttempts": retry.max_attempts - 1,
            "BackoffRate": retry.backoff_rate,
        }]
    return state


def _step_states(step: Step, task: AwsTask, after: str | None) -> dict[str, Any]:
    states: dict[str, Any] = {}
    result = _result_path(step)
    for index, lookup in enumerate(task.lookups):
        following = (_lookup_name(step, task.lookups[index + 1].name)
                     if index + 1 < len(task.lookups) else step.name)
        states[_lookup_name(step, lookup.name)] = {
            **_task(step, lookup.resource, lookup.parameters, f"{result}.{lookup.name}",
                    READ_RETRY, lookup.selector),
            "Next": following,
        }
    # Lookups and the task share $.results.<step>: the task's result goes beside them.
    task_path = f"{result}.task" if task.lookups else result
    main = _task(step, task.resource, task.parameters, task_path, step.retry, task.selector)
    if task.poll is None:
        _link(main, after)
        return {**states, step.name: main}
    return {**states, **_poll_states(step, main, task.poll, after)}


def _poll_states(step: Step, start: dict[str, Any], poll: Poll,
                 after: str | None) -> dict[str, Any]:
    """Start, then wait / describe / choose until the status is final."""
    if poll.token:
        start["Parameters"] = {**start["Parameters"], f"{poll.token}.$": "States.UUID()"}
    wait, check, choose = (f"{step.name}-wait", f"{step.name}-check", f"{step.name}-done?")
    result = _result_path(step)
    start["Next"] = wait
    done = after or f"{step.name}-succeeded"
    states = {
        step.name: start,
        wait: {"Type": "Wait", "Seconds": poll.wait_seconds, "Next": check},
        check: {**_task(step, poll.resource, poll.parameters, result, READ_RETRY, poll.selector),
                "Next": choose},
        choose: {
            "Type": "Choice",
            "Choices": [
                {"Variable": f"{result}.Status", "StringEquals": poll.succeeded, "Next": done},
                *[{"Variable": f"{result}.Status", "StringEquals": status,
                   "Next": _notify_name(step)} for status in poll.failed],
            ],
            "Default": wait,
        },
    }
    if after is None:
        states[done] = {"Type": "Succeed"}
    return states


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
                    # A failed poll has no $.error: the last status it read says why.
                    "error.$": "States.JsonToString($)",
                    "rollback": step.rollback,
                    "log": "Step Functions execution history",
                },
            },
        },
        "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 2, "MaxAttempts": 3,
                   "BackoffRate": 2.0}],
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


def _lookup_name(step: Step, lookup: str) -> str:
    return f"{step.name}-find-{lookup}"


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


def placeholders(definition: dict[str, Any]) -> set[str]:
    """Every ``${Name}`` the definition leaves for the stack to fill."""
    return set(re.findall(r"\$\{(\w+)\}", json.dumps(definition)))


def substitute(definition: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Fill ``${Name}`` placeholders (as CloudFormation DefinitionSubstitutions does)."""
    text = json.dumps(definition)
    missing = sorted(placeholders(definition) - set(values))
    if missing:
        raise KeyError(f"no value for placeholders: {', '.join(missing)}")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return json.loads(text)
