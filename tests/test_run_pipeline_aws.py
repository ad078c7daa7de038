"""``run-pipeline --backend aws``: upsert, start, wait, against moto (and Stubber where
moto lacks an API)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from pipelines.cli import run_pipeline
from pipelines.cli.run_pipeline import main, wait_for_execution

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/pipeline-role"
BUCKET = "fraud-artifacts"
EXECUTION_ARN = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/fraud-detection/execution/x1"


def aws_args(*extra: str, tags=None, kwargs=None) -> list[str]:
    return [
        "--backend", "aws",
        "--module-name", "pipelines.fraud.pipeline",
        "--role-arn", ROLE,
        "--tags", json.dumps(tags or [{"Key": "team", "Value": "fraud"}]),
        "--kwargs", json.dumps(kwargs or {"region": REGION, "role": ROLE,
                                          "default_bucket": BUCKET}),
        "--poll-seconds", "0",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def aws(monkeypatch):
    """Mocked AWS; moto has no ListPipelineExecutionSteps, so step listing is faked."""
    monkeypatch.setattr(
        run_pipeline, "_step_statuses", lambda client, arn: {"Preprocess": "Succeeded"}
    )
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


def test_creates_then_updates_the_pipeline_and_runs_executions(aws, capsys):
    assert main(aws_args("--pipeline-parameters", '{"QualityThresholdAP": 0.4}')) == 0
    out = capsys.readouterr().out
    assert "Created/updated pipeline fraud-detection" in out
    assert "step Preprocess: Succeeded" in out
    assert "Execution Succeeded" in out

    created = aws.describe_pipeline(PipelineName="fraud-detection")
    assert created["RoleArn"] == ROLE
    steps = json.loads(created["PipelineDefinition"])["Steps"]
    assert [s["Name"] for s in steps] == ["Preprocess", "Tune", "Train", "Evaluate", "QualityGate"]
    tags = aws.list_tags(ResourceArn=created["PipelineArn"])["Tags"]
    assert {"Key": "team", "Value": "fraud"} in tags
    (execution,) = aws.list_pipeline_executions(PipelineName="fraud-detection")[
        "PipelineExecutionSummaries"
    ]
    parameters = aws.list_pipeline_parameters_for_execution(
        PipelineExecutionArn=execution["PipelineExecutionArn"]
    )["PipelineParameters"]
    assert {"Name": "QualityThresholdAP", "Value": "0.4"} in parameters

    # The code the definition references was uploaded to the artifacts bucket.
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert {k.split("/")[2] for k in keys if k.endswith("sourcedir.tar.gz")} == {
        "processing", "training", "inference"
    }  # fmt: skip

    # Second run: the pipeline exists, so it is updated (new definition, tags merged);
    # --no-wait returns once the execution has started.
    changed = {"region": REGION, "role": ROLE, "default_bucket": BUCKET,
               "input_features_uri": "s3://other-lake/features/transactions"}  # fmt: skip
    retrain = [{"Key": "stage", "Value": "retrain"}]
    assert main(aws_args("--no-wait", tags=retrain, kwargs=changed)) == 0
    out = capsys.readouterr().out
    assert "Execution started: arn:aws:sagemaker" in out
    assert "step Preprocess" not in out
    updated = aws.describe_pipeline(PipelineName="fraud-detection")
    assert updated["PipelineArn"] == created["PipelineArn"]
    assert "s3://other-lake/features/transactions" in updated["PipelineDefinition"]
    tags = aws.list_tags(ResourceArn=updated["PipelineArn"])["Tags"]
    assert {"Key": "team", "Value": "fraud"} in tags
    assert {"Key": "stage", "Value": "retrain"} in tags
    executions = aws.list_pipeline_executions(PipelineName="fraud-detection")
    assert len(executions["PipelineExecutionSummaries"]) == 2


def test_aws_backend_requires_a_role(capsys):
    args = [a for a in aws_args() if a not in ("--role-arn", ROLE)]
    assert main(args) == 2
    assert "--role-arn is required" in capsys.readouterr().err


def test_bad_tags_are_a_user_error(capsys):
    assert main(aws_args(tags={"team": "fraud"})) == 2
    assert "--tags must be a JSON list" in capsys.readouterr().err


# --- waiting (Stubber: moto cannot list execution steps) ------------------------------


def stubbed_client():
    client = boto3.client("sagemaker", region_name=REGION)
    return client, Stubber(client)


def add_steps(stubber: Stubber, *steps: tuple[str, str], next_token: str | None = None,
              token: str | None = None) -> None:  # fmt: skip
    expected = {"PipelineExecutionArn": EXECUTION_ARN, "SortOrder": "Ascending"}
    if token:
        expected["NextToken"] = token
    response = {"PipelineExecutionSteps": [{"StepName": n, "StepStatus": s} for n, s in steps]}
    if next_token:
        response["NextToken"] = next_token
    stubber.add_response("list_pipeline_execution_steps", response, expected)


def add_status(stubber: Stubber, status: str, reason: str | None = None) -> None:
    response = {"PipelineExecutionArn": EXECUTION_ARN, "PipelineExecutionStatus": status}
    if reason:
        response["FailureReason"] = reason
    stubber.add_response(
        "describe_pipeline_execution", response, {"PipelineExecutionArn": EXECUTION_ARN}
    )


def test_wait_reports_each_step_change_once_and_follows_pages():
    client, stubber = stubbed_client()
    add_steps(stubber, ("Preprocess", "Executing"))
    add_status(stubber, "Executing")
    add_steps(stubber, ("Preprocess", "Succeeded"), next_token="p2")
    add_steps(stubber, ("Train", "Executing"), token="p2")
    add_status(stubber, "Executing")
    add_steps(stubber, ("Preprocess", "Succeeded"), ("Train", "Succeeded"))
    add_status(stubber, "Succeeded")
    lines: list[str] = []
    with stubber:
        description = wait_for_execution(
            client, EXECUTION_ARN, poll_seconds=0, timeout_seconds=60,
            report=lines.append, sleep=lambda _: None,
        )  # fmt: skip
    stubber.assert_no_pending_responses()
    assert description["PipelineExecutionStatus"] == "Succeeded"
    assert lines == [
        "  step Preprocess: Executing",
        "  step Preprocess: Succeeded",
        "  step Train: Executing",
        "  step Train: Succeeded",
    ]


def test_wait_gives_up_after_the_timeout():
    client, stubber = stubbed_client()
    add_steps(stubber, ("Preprocess", "Executing"))
    add_status(stubber, "Executing")
    with stubber, pytest.raises(TimeoutError, match="still Executing"):
        wait_for_execution(
            client, EXECUTION_ARN, poll_seconds=0, timeout_seconds=0,
            report=lambda _: None, sleep=lambda _: None,
        )  # fmt: skip


def test_failed_execution_exits_1_with_the_reason(aws, monkeypatch, capsys):
    def failed(client, arn, **kwargs):
        return {"PipelineExecutionStatus": "Failed", "FailureReason": "Step QualityGateFailed"}

    monkeypatch.setattr(run_pipeline, "wait_for_execution", failed)
    assert main(aws_args()) == 1
    assert "Execution Failed: Step QualityGateFailed" in capsys.readouterr().out


def test_project_tags_are_added_for_a_sagemaker_project(monkeypatch):
    """The template's buildspec passes sagemaker_project_name; its tags join ours."""
    from pipelines.fraud.modules import get_pipeline_custom_tags

    client, stubber = stubbed_client()
    project_arn = "arn:aws:sagemaker:us-east-1:123456789012:project/fraud"
    stubber.add_response(
        "describe_project",
        {"ProjectArn": project_arn, "ProjectName": "fraud", "ProjectId": "p-1",
         "ProjectStatus": "CreateCompleted",
         "CreationTime": "2026-01-01T00:00:00Z"},
        {"ProjectName": "fraud"},
    )  # fmt: skip
    stubber.add_response(
        "list_tags",
        {"Tags": [{"Key": "sagemaker:project-id", "Value": "p-1"},
                  {"Key": "team", "Value": "from-project"}]},
        {"ResourceArn": project_arn},
    )  # fmt: skip
    monkeypatch.setattr(boto3, "client", lambda service, region_name=None: client)
    ours = [{"Key": "team", "Value": "fraud"}]
    kwargs = {"region": REGION, "sagemaker_project_name": "fraud"}
    with stubber:
        tags = get_pipeline_custom_tags("pipelines.fraud.pipeline", kwargs, ours)
    assert tags == [
        {"Key": "team", "Value": "fraud"},  # the command line wins on a clash
        {"Key": "sagemaker:project-id", "Value": "p-1"},
    ]
    # Without a project name, nothing is looked up.
    assert get_pipeline_custom_tags("pipelines.fraud.pipeline", {"region": REGION}, ours) == ours
