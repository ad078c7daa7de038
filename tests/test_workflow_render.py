"""One declaration, two renderings: the Step Functions state machine is well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cfnlint.decode import decode

from pipelines.core.params import DEFAULT_LABEL_DELAY_DAYS
from pipelines.data.features.emr import ARCHIVE_NAME as EMR_ARCHIVE
from pipelines.data.features.emr import ENTRY_POINT as EMR_ENTRY
from pipelines.data.features.emr import JobCode, serverless_job_driver
from pipelines.workflow.artifacts import STATE_MACHINE
from pipelines.workflow.declaration import FRAUD_WORKFLOW, PARQUET
from pipelines.workflow.render import (
    FAILED_STATE,
    aws_steps,
    placeholders,
    substitute,
    to_state_machine,
)
from pipelines.workflow.stack import Environment, stack_parameters

PLACEHOLDERS = {
    "GlueJobName": "fraud-etl",
    "EmrApplicationId": "00abc",
    "EmrJobRoleArn": "arn:aws:iam::1:role/feature-job",
    "ArtifactsBucket": "artifacts",
    "CodeVersion": "abc123",
    "LabelDelayDays": "7",
    "LakeBucket": "lake",
    "DataKeyArn": "arn:aws:kms:us-east-1:1:key/k",
    "PipelineName": "fraud-detection",
    "EndpointName": "fraudops-dev-fraud",
    "BackupVaultName": "fraud-vault",
    "BackupRoleArn": "arn:aws:iam::1:role/backup",
    "FailureNotificationFunctionArn": "arn:aws:lambda:us-east-1:1:function:notify",
}


def _reachable(machine: dict) -> set[str]:
    seen, frontier = set(), [machine["StartAt"]]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        state = machine["States"][name]
        targets = [state.get("Next"), state.get("Default")]
        targets += [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
        frontier += [t for t in targets if t]
    return seen


def test_state_machine_is_well_formed():
    machine = to_state_machine(FRAUD_WORKFLOW)
    states = machine["States"]
    assert machine["StartAt"] == "run-day-given?"
    for name, state in states.items():
        assert state["Type"] in {"Task", "Wait", "Choice", "Fail", "Succeed", "Pass"}, name
        for target in [state.get("Next"), state.get("Default")] + [
            c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])
        ]:
            assert target is None or target in states, f"{name} -> {target}"
        if state["Type"] in {"Task", "Wait", "Pass"}:
            assert ("Next" in state) != bool(state.get("End")), name
    assert _reachable(machine) == set(states), "every state is reachable"


def test_every_aws_step_keeps_its_retry_policy_and_catch():
    machine = to_state_machine(FRAUD_WORKFLOW)
    for step in aws_steps(FRAUD_WORKFLOW):
        state = machine["States"][step.name]
        assert state["Catch"][0]["Next"] == f"notify-{step.name}-failed"
        notify = machine["States"][f"notify-{step.name}-failed"]
        assert notify["Next"] == FAILED_STATE
        assert notify["Parameters"]["Payload"]["detail"]["step"] == step.name
        if step.retry.max_attempts > 1:
            assert state["Retry"][0]["MaxAttempts"] == step.retry.max_attempts - 1
        else:
            assert "Retry" not in state


def test_pipeline_step_polls_until_the_execution_finishes():
    states = to_state_machine(FRAUD_WORKFLOW)["States"]
    start = states["pipeline"]
    assert start["Resource"].endswith("sagemaker:startPipelineExecution")
    assert start["Parameters"]["ClientRequestToken.$"] == "States.UUID()"
    choice = states["pipeline-done?"]
    assert {c["StringEquals"]: c["Next"] for c in choice["Choices"]} == {
        "Succeeded": "score-find-endpoint",
        "Failed": "notify-pipeline-failed",
        "Stopped": "notify-pipeline-failed",
    }
    assert choice["Default"] == "pipeline-wait"


def test_placeholders_are_all_substituted():
    machine = substitute(to_state_machine(FRAUD_WORKFLOW), PLACEHOLDERS)
    assert "${" not in json.dumps(machine)


def test_failure_payload_is_understood_by_the_failure_handler():
    from pipelines.core.failures import describe_failure

    payload = to_state_machine(FRAUD_WORKFLOW)["States"]["notify-ingest-failed"]["Parameters"][
        "Payload"
    ]
    event = {
        **payload,
        "detail": {
            k.removesuffix(".$"): ("exec-1" if k.endswith(".$") else v)
            for k, v in payload["detail"].items()
        },
    }
    assert describe_failure(event)["step"] == "ingest"


# --- the rendered definition against the templates -------------------------------------------

INFRA = Path(__file__).resolve().parent.parent / "infra"


def _template(name: str) -> dict:
    parsed, matches = decode(str(INFRA / name))
    assert not matches
    return parsed


def _exports() -> set[str]:
    """Every export name any stack declares, as a Sub pattern."""
    names = set()
    for path in INFRA.glob("*.yaml"):
        for output in _template(path.name).get("Outputs", {}).values():
            if "Export" in output:
                names.add(output["Export"]["Name"]["Fn::Sub"])
    return names


def _declared(value, workflow: dict) -> list[str]:
    """Problems with one DefinitionSubstitutions value: what it names must exist."""
    if isinstance(value, dict) and "Fn::ImportValue" in value:
        name = value["Fn::ImportValue"]["Fn::Sub"]
        return [] if name in _exports() else [f"no stack exports {name}"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        resource = value["Fn::GetAtt"][0]
        return [] if resource in workflow["Resources"] else [f"no resource {resource}"]
    if isinstance(value, dict) and "Ref" in value:
        ref = value["Ref"]
        known = set(workflow["Parameters"]) | set(workflow["Resources"])
        return [] if ref in known else [f"nothing named {ref}"]
    if isinstance(value, dict) and "Fn::Sub" in value:
        names = re.findall(r"\$\{([\w:]+)\}", value["Fn::Sub"])
        return [f"unknown {n}" for n in names
                if not n.startswith("AWS::") and n not in workflow["Parameters"]]
    return [f"unexpected value {value!r}"]


def test_every_name_a_task_uses_is_declared_by_a_stack():
    workflow = _template("workflow.yaml")
    machine = workflow["Resources"]["StateMachine"]["Properties"]
    substitutions = machine["DefinitionSubstitutions"]
    assert placeholders(to_state_machine(FRAUD_WORKFLOW)) == set(substitutions)
    problems = {k: p for k, v in substitutions.items() if (p := _declared(v, workflow))}
    assert not problems, problems
    # The definition the stack loads is the one `infra build` uploads.
    assert machine["DefinitionS3Location"]["Key"] == {"Fn::Sub": "code/${CodeVersion}/"
                                                                 + STATE_MACHINE}


def test_every_task_retries_and_catches_into_the_failure_notification():
    states = to_state_machine(FRAUD_WORKFLOW)["States"]
    for name, state in states.items():
        if state["Type"] != "Task" or name.startswith("notify-"):
            continue
        assert state["Retry"][0]["ErrorEquals"] == ["States.ALL"], name
        (catch,) = state["Catch"]
        notify = states[catch["Next"]]
        assert catch["ErrorEquals"] == ["States.ALL"] and catch["Next"].startswith("notify-")
        assert notify["Parameters"]["FunctionName"] == "${FailureNotificationFunctionArn}"
        assert notify["Next"] == FAILED_STATE


def test_the_feature_job_runs_the_uploaded_code_on_the_stacks_application():
    task = to_state_machine(FRAUD_WORKFLOW)["States"]["features"]
    assert task["Resource"] == "arn:aws:states:::emr-serverless:startJobRun.sync"
    code = JobCode(f"s3://${{ArtifactsBucket}}/code/${{CodeVersion}}/{EMR_ARCHIVE}",
                   f"s3://${{ArtifactsBucket}}/code/${{CodeVersion}}/{EMR_ENTRY}")
    assert task["Parameters"]["JobDriver"] == serverless_job_driver(
        code, "s3://${LakeBucket}/curated/transactions/", "s3://${LakeBucket}/features/transactions/",
        "${LabelDelayDays}")
    arguments = task["Parameters"]["JobDriver"]["SparkSubmit"]["EntryPointArguments"]
    assert arguments[arguments.index("--label-delay-days") + 1] == "${LabelDelayDays}"
    workflow = _template("workflow.yaml")
    # One source: no template default; the deploy passes params.py's constant.
    assert "Default" not in workflow["Parameters"]["LabelDelayDays"]
    assert stack_parameters(Environment("dev"), "workflow", {})["LabelDelayDays"] == str(
        DEFAULT_LABEL_DELAY_DAYS)
    application = workflow["Resources"]["FeatureApplication"]
    assert application["Type"] == "AWS::EMRServerless::Application"
    assert application["Properties"]["Type"] == "SPARK"


def test_the_backup_job_keeps_its_recovery_point_inside_the_vault_lock_and_is_polled():
    states = to_state_machine(FRAUD_WORKFLOW)["States"]
    days = states["backup"]["Parameters"]["Lifecycle"]["DeleteAfterDays"]
    backup = _template("backup.yaml")
    lock = backup["Resources"]["Vault"]["Properties"]["LockConfiguration"]
    assert lock["MinRetentionDays"] <= days <= lock["MaxRetentionDays"]
    assert days == backup["Parameters"]["RetentionDays"]["Default"]
    assert states["backup"]["Next"] == "backup-wait"
    choice = {c["StringEquals"]: c["Next"] for c in states["backup-done?"]["Choices"]}
    assert choice["COMPLETED"] == "backup-succeeded"
    assert {choice[s] for s in ("FAILED", "ABORTED", "EXPIRED", "PARTIAL")} == {
        "notify-backup-failed"}


def test_the_score_task_uses_the_served_model_and_the_inference_content_type():
    states = to_state_machine(FRAUD_WORKFLOW)["States"]
    task = states["score"]
    assert task["Parameters"]["ModelName.$"] == "$.results.score.config.ModelName"
    chain = ["score-find-endpoint", "score-find-config", "score-find-model",
             "score-find-package", "score"]
    for state, following in zip(chain, chain[1:], strict=False):
        assert states[state]["Next"] == following
    assert task["Parameters"]["TransformInput"]["ContentType"] == PARQUET
    assert task["Parameters"]["TransformOutput"]["Accept"] == PARQUET
    assert "scored/transactions/dt={}" in task["Parameters"]["TransformOutput"]["S3OutputPath.$"]
