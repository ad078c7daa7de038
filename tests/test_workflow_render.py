"""One declaration, three renderings: the ASL and Data Pipeline exports are valid."""

from __future__ import annotations

import json

import boto3
from botocore.stub import Stubber

from pipelines.workflow.declaration import FRAUD_WORKFLOW
from pipelines.workflow.render import (
    FAILED_STATE,
    aws_steps,
    substitute,
    to_data_pipeline,
    to_state_machine,
)

PLACEHOLDERS = {
    "GlueJobName": "fraud-etl",
    "EmrClusterId": "j-ABC",
    "FeatureJobScript": "s3://code/feature_job.py",
    "PipelineName": "fraud-detection",
    "ModelName": "fraud-model",
    "ScoringInputUri": "s3://lake/features/",
    "ScoredOutputUri": "s3://lake/scored/",
    "BackupVaultName": "fraud-vault",
    "LakeBucketArn": "arn:aws:s3:::lake",
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
    assert machine["StartAt"] == "ingest"
    for name, state in states.items():
        assert state["Type"] in {"Task", "Wait", "Choice", "Fail", "Succeed"}, name
        for target in [state.get("Next"), state.get("Default")] + [
            c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])
        ]:
            assert target is None or target in states, f"{name} -> {target}"
        if state["Type"] in {"Task", "Wait"}:
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
        "Succeeded": "score",
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


def test_data_pipeline_export_is_accepted_by_put_pipeline_definition():
    objects = to_data_pipeline(
        FRAUD_WORKFLOW,
        log_uri="s3://logs/datapipeline/",
        role="DataPipelineDefaultRole",
        resource_role="DataPipelineDefaultResourceRole",
        failure_topic_arn="arn:aws:sns:us-east-1:1:failures",
    )
    ids = [o["id"] for o in objects]
    for step in aws_steps(FRAUD_WORKFLOW):
        assert step.name in ids
    by_id = {o["id"]: {f["key"]: f for f in o["fields"]} for o in objects}
    assert by_id["features"]["type"]["stringValue"] == "EmrActivity"
    assert by_id["features"]["dependsOn"]["refValue"] == "ingest"
    assert by_id["ingest"]["command"]["stringValue"].startswith("aws glue start-job-run")
    assert by_id["ingest"]["maximumRetries"]["stringValue"] == "2"

    client = boto3.client("datapipeline", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("create_pipeline", {"pipelineId": "df-1"},
                          {"name": "fraud", "uniqueId": "fraud-1"})
        stub.add_response(
            "put_pipeline_definition",
            {"errored": False, "validationErrors": [], "validationWarnings": []},
            {"pipelineId": "df-1", "pipelineObjects": objects},
        )
        pipeline_id = client.create_pipeline(name="fraud", uniqueId="fraud-1")["pipelineId"]
        result = client.put_pipeline_definition(pipelineId=pipeline_id, pipelineObjects=objects)
        assert result["errored"] is False
        stub.assert_no_pending_responses()
