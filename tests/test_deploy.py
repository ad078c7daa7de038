"""Deploy on approval: local blue/green with rollback (real processes, real HTTP), AWS path."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import urllib.error

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from moto import mock_aws

from lambdas.deploy.handler import handler as deploy_lambda
from pipelines.cli.main import main
from pipelines.core.code import unit_dir
from pipelines.core.events import MODEL_PACKAGE_STATE_CHANGE, LocalLambdaContext
from pipelines.core.notifications import FAILURES_TOPIC, read_outbox
from pipelines.model.registry import APPROVED, REJECTED, LocalModelRegistry
from pipelines.serving.deploy.aws import SageMakerEndpointBackend
from pipelines.serving.deploy.local import (
    LocalEndpointBackend,
    endpoint_state_path,
    http_request,
    is_endpoint_process,
    read_endpoint_state,
)
from pipelines.serving.deploy.promotion import (
    PromotionRequest,
    StageConfig,
    handle_aws_event,
    handle_codepipeline_job,
)
from pipelines.serving.deploy.sample_model import (
    create_request,
    train_model_files,
    upload_model,
    write_corrupt_tarball,
)

GROUP = "fraud-detection"


@pytest.fixture
def registry(workspace):
    registry = LocalModelRegistry.for_workspace(workspace)
    yield registry
    LocalEndpointBackend(workspace).stop()  # never leave an endpoint process behind


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_model_files(tmp_path_factory.mktemp("model"))


@pytest.fixture
def code_uri(workspace) -> str:
    """The inference/ folder as the pipeline stages it: a sourcedir tarball in S3."""
    uri = "s3://artifacts/code/run-1/inference.tar.gz"
    path = workspace.local_path(uri)
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(unit_dir("inference") / "inference.py", arcname="inference.py")
    return uri


def register(registry, workspace, model_dir, run: str, code_uri=None, corrupt=False) -> str:
    key = f"models/{run}/model.tar.gz"
    if corrupt:
        uri = workspace.s3_uri("artifacts", key)
        write_corrupt_tarball(workspace.local_path(uri))
    else:
        uri = upload_model(workspace, model_dir, key)
    request = create_request(GROUP, uri, submit_directory=code_uri)
    return registry.create_model_package(request, created_by="alice")["ModelPackageArn"]


def deployment(result) -> dict:
    (delivery,) = result["Deliveries"]
    assert delivery.error is None, delivery.error
    return delivery.result


def score(url: str) -> float:
    status, body = http_request(
        f"{url}/invocations", b"9,9,9,0", {"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    assert status == 200, body
    return float(body)


def test_approval_deploys_and_the_endpoint_answers(registry, workspace, model_dir, code_uri):
    arn = register(registry, workspace, model_dir, "run-1", code_uri)
    result = deployment(registry.update_model_package(arn, APPROVED, "bob", "AP 0.8"))
    assert result["status"] == "InService"
    state = read_endpoint_state(workspace)
    assert state["model_package_arn"] == arn and state["version"] == 1
    assert is_endpoint_process(state["pid"])
    assert http_request(f"{state['url']}/ping")[0] == 200
    assert 0.0 <= score(state["url"]) <= 1.0
    history = LocalEndpointBackend(workspace).history.list()
    assert [(h["version"], h["status"]) for h in history] == [(1, "InService")]


def test_unhealthy_version_rolls_back_and_the_old_one_keeps_serving(registry, workspace, model_dir):
    good = register(registry, workspace, model_dir, "run-1")
    deployment(registry.update_model_package(good, APPROVED, "bob", "ok"))
    before = read_endpoint_state(workspace)
    old_score = score(before["url"])

    bad = register(registry, workspace, model_dir, "run-2", corrupt=True)
    result = deployment(registry.update_model_package(bad, APPROVED, "bob", "ok"))

    assert result["status"] == "RolledBack"
    assert "version 1 keeps serving" in result["message"]
    assert "exited" in result["message"]  # model_fn failed in the new process
    assert read_endpoint_state(workspace)["pid"] == before["pid"]
    assert score(before["url"]) == old_score  # real request to the old process
    history = LocalEndpointBackend(workspace).history.list()
    assert [(h["version"], h["status"]) for h in history] == [(2, "RolledBack"), (1, "InService")]
    failures = read_outbox(workspace.outbox, FAILURES_TOPIC)
    assert failures[-1]["message"]["model_package_arn"] == bad


def test_unreadable_artifact_is_rolled_back_too(registry, workspace, model_dir):
    good = register(registry, workspace, model_dir, "run-1")
    deployment(registry.update_model_package(good, APPROVED, "bob", "ok"))
    url = read_endpoint_state(workspace)["url"]
    broken = register(registry, workspace, model_dir, "run-2")
    workspace.local_path("s3://artifacts/models/run-2/model.tar.gz").write_bytes(b"not gzip")
    result = deployment(registry.update_model_package(broken, APPROVED, "bob", "ok"))
    assert result["status"] == "RolledBack"
    assert "not a readable tar.gz" in result["message"]
    assert http_request(f"{url}/ping")[0] == 200


def test_a_new_version_replaces_the_old_process(registry, workspace, model_dir):
    first = register(registry, workspace, model_dir, "run-1")
    deployment(registry.update_model_package(first, APPROVED, "bob", "ok"))
    old = read_endpoint_state(workspace)
    second = register(registry, workspace, model_dir, "run-2")
    result = deployment(registry.update_model_package(second, APPROVED, "carol", "better AP"))
    new = read_endpoint_state(workspace)
    assert result["status"] == "InService" and new["version"] == 2
    assert new["port"] != old["port"]
    assert not is_endpoint_process(old["pid"])
    with pytest.raises(urllib.error.URLError):
        http_request(f"{old['url']}/ping", timeout=2)
    assert http_request(f"{new['url']}/ping")[0] == 200


def test_a_rejected_model_is_never_deployed(registry, workspace, model_dir):
    arn = register(registry, workspace, model_dir, "run-1")
    result = deployment(registry.update_model_package(arn, REJECTED, "bob", "recall too low"))
    assert result["status"] == "Skipped"
    assert read_endpoint_state(workspace) is None
    # A stale or replayed "Approved" event for the rejected package deploys nothing either.
    forged = {
        "source": "aws.sagemaker",
        "detail-type": MODEL_PACKAGE_STATE_CHANGE,
        "resources": [arn],
        "detail": {"ModelPackageArn": arn, "ModelApprovalStatus": APPROVED},
    }
    context = LocalLambdaContext("deploy", workspace_root=str(workspace.root))
    assert deploy_lambda(forged, context)["status"] == "Skipped"
    assert read_endpoint_state(workspace) is None
    statuses = [h["status"] for h in LocalEndpointBackend(workspace).history.list()]
    assert statuses == ["Skipped", "Skipped"]


def test_retiring_the_serving_model_is_recorded_not_deployed(registry, workspace, model_dir):
    arn = register(registry, workspace, model_dir, "run-1")
    deployment(registry.update_model_package(arn, APPROVED, "bob", "ok"))
    result = deployment(registry.update_model_package(arn, REJECTED, "carol", "drift"))
    assert result["status"] == "Skipped"
    assert read_endpoint_state(workspace)["version"] == 1


def test_decisions_and_deployments_reach_the_audit_trail(registry, workspace, model_dir):
    from pipelines.compliance.audit import audit_log_path

    arn = register(registry, workspace, model_dir, "run-1")
    registry.update_model_package(arn, REJECTED, "bob", "no")
    entries = [json.loads(line) for line in audit_log_path(workspace).read_text().splitlines()]
    assert [(e["action"], e["actor"]) for e in entries[1:]] == [  # [0]: audit.open
        ("model.register", "alice"),
        ("model.reject", "bob"),
        ("deploy.skip", "deploy-on-approval"),
    ]
    assert entries[-1]["details"]["status"] == "Skipped"


# --- AWS ------------------------------------------------------------------------

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
PACKAGE = {
    "ModelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-detection/3",
    "ModelPackageVersion": 3,
}


@mock_aws
def test_aws_first_deployment_creates_model_config_and_endpoint():
    client = boto3.client("sagemaker", region_name="us-east-1")
    backend = SageMakerEndpointBackend(client, ROLE, endpoint_name="fraudops-dev-fraud")
    result = backend.deploy(PACKAGE)
    assert result.status == "Updating" and result.endpoint_name == "fraudops-dev-fraud"
    endpoint = client.describe_endpoint(EndpointName="fraudops-dev-fraud")
    config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    model = client.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"] == PACKAGE["ModelPackageArn"]
    assert model["ExecutionRoleArn"] == ROLE
    assert variant["InstanceType"] == "ml.m5.large"


def test_aws_later_deployment_is_a_blue_green_update_with_alarm_rollback():
    client = boto3.client("sagemaker", region_name="us-east-1")
    backend = SageMakerEndpointBackend(
        client, ROLE, endpoint_name="fraudops-dev-fraud", alarm_names=["fraud-5xx"]
    )
    arn = "arn:aws:sagemaker:us-east-1:123456789012:{}/fraudops-dev-fraud".format
    stubber = Stubber(client)
    stubber.add_response(
        "create_model",
        {"ModelArn": arn("model")},
        {
            "ModelName": ANY,
            "PrimaryContainer": {"ModelPackageName": PACKAGE["ModelPackageArn"]},
            "ExecutionRoleArn": ROLE,
            "Tags": ANY,
        },
    )
    stubber.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": arn("endpoint-config")},
        {
            "EndpointConfigName": ANY,
            "ProductionVariants": ANY,
            "Tags": ANY,
        },
    )
    stubber.add_response(
        "describe_endpoint",
        {
            "EndpointName": "fraudops-dev-fraud",
            "EndpointArn": arn("endpoint"),
            "EndpointConfigName": "old",
            "EndpointStatus": "InService",
            "CreationTime": "2026-01-01T00:00:00Z",
            "LastModifiedTime": "2026-01-01T00:00:00Z",
        },
        {"EndpointName": "fraudops-dev-fraud"},
    )
    stubber.add_response(
        "update_endpoint",
        {"EndpointArn": arn("endpoint")},
        {
            "EndpointName": "fraudops-dev-fraud",
            "EndpointConfigName": ANY,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 300,
                    },
                    "TerminationWaitInSeconds": 300,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "fraud-5xx"}]},
            },
        },
    )
    with stubber:
        result = backend.deploy(PACKAGE)
    stubber.assert_no_pending_responses()
    assert result.status == "Updating" and "blue/green" in result.message


def state_change(arn: str, status: str) -> dict:
    return {
        "source": "aws.sagemaker",
        "detail-type": MODEL_PACKAGE_STATE_CHANGE,
        "resources": [arn],
        "detail": {"ModelPackageArn": arn, "ModelApprovalStatus": status},
    }


@pytest.fixture
def sagemaker(monkeypatch):
    """moto SageMaker with the deploy function's environment; the failures topic read by SQS."""
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        topic = sns.create_topic(Name="pipeline-failures")["TopicArn"]
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="failures")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"]
        )
        monkeypatch.setenv("FRAUDOPS_BACKEND", "aws")
        monkeypatch.setenv("ENDPOINT_NAME", "fraudops-dev-fraud")
        monkeypatch.setenv("EXECUTION_ROLE_ARN", ROLE)
        monkeypatch.setenv("FAILURES_TOPIC_ARN", topic)
        client = boto3.client("sagemaker", region_name="us-east-1")
        client.create_model_package_group(ModelPackageGroupName=GROUP)

        def notified() -> list[dict]:
            received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
            return [json.loads(json.loads(m["Body"])["Message"]) for m in received["Messages"]]

        client.notified = notified
        yield client


def test_aws_lambda_deploys_only_approved_packages(sagemaker, sagemaker_decision):
    request = create_request(GROUP, "s3://bucket/model.tar.gz")
    arns = [sagemaker.create_model_package(**request)["ModelPackageArn"] for _ in range(2)]
    sagemaker_decision(sagemaker, arns[0], "Rejected")
    sagemaker_decision(sagemaker, arns[1], "Approved")

    assert deploy_lambda(state_change(arns[0], "Rejected"), None)["status"] == "Skipped"
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert deploy_lambda(state_change(arns[1], "Approved"), None)["status"] == "Updating"
    assert [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]] == [
        "fraudops-dev-fraud"
    ]


def test_aws_approval_by_the_creator_deploys_nothing_resets_and_notifies(
    sagemaker, sagemaker_decision
):
    arn = sagemaker.create_model_package(**create_request(GROUP, "s3://bucket/model.tar.gz"))[
        "ModelPackageArn"
    ]
    # The creator approves (moto records the creator's profile as LastModifiedBy).
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    assert described["LastModifiedBy"] == described["CreatedBy"]

    result = deploy_lambda(state_change(arn, "Approved"), None)

    assert result["status"] == "Refused"
    assert "approved by the principal that created it" in result["message"]
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_models()["Models"] == []
    after = sagemaker.describe_model_package(ModelPackageName=arn)
    assert after["ModelApprovalStatus"] == "PendingManualApproval"
    assert after["ApprovalDescription"].startswith("reset by deploy-on-approval")
    (notice,) = sagemaker.notified()
    assert notice["status"] == "Refused" and notice["execution"] == arn
    assert "four-eyes" in notice["error"]

    # A second person's approval then deploys it.
    sagemaker_decision(sagemaker, arn, "Approved")
    assert deploy_lambda(state_change(arn, "Approved"), None)["status"] == "Updating"
    assert len(sagemaker.list_endpoints()["Endpoints"]) == 1


CREATOR = {"IamIdentity": {"Arn": "arn:aws:sts::123456789012:assumed-role/ml/alice",
                           "PrincipalId": "AROAEXAMPLE:alice"}}  # fmt: skip


def described_package(approver: dict | None) -> dict:
    package = {**PACKAGE, "ModelApprovalStatus": "Approved", "CreatedBy": CREATOR}
    return {**package, "LastModifiedBy": approver} if approver else package


def expecting_reset(client) -> Stubber:
    """A stubbed SageMaker client that expects only the reset of PACKAGE to pending."""
    stubber = Stubber(client)
    stubber.add_response(
        "update_model_package",
        {"ModelPackageArn": PACKAGE["ModelPackageArn"]},
        {
            "ModelPackageArn": PACKAGE["ModelPackageArn"],
            "ModelApprovalStatus": "PendingManualApproval",
            "ApprovalDescription": ANY,
        },
    )
    return stubber


class Outbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict]] = []

    def publish(self, topic: str, subject: str, message: dict) -> str:
        self.messages.append((topic, subject, message))
        return "m-1"


@pytest.mark.parametrize(
    "approver",
    [
        # the same role session, spelt with other case and a zero-width space
        {"IamIdentity": {"Arn": "arn:aws:sts::123456789012:assumed-role/ML/Al\u200bice"}},
        {"IamIdentity": {"PrincipalId": "aroaexample:ALICE"}},
        None,  # nobody recorded as approver: never deploys either
    ],
)
def test_aws_handler_refuses_the_same_principal_with_a_stubbed_registry(approver):
    client = boto3.client("sagemaker", region_name="us-east-1")
    outbox = Outbox()
    backend = SageMakerEndpointBackend(client, ROLE, endpoint_name="fraudops-dev-fraud",
                                       notifier=outbox)  # fmt: skip
    stubber = expecting_reset(client)
    event = state_change(PACKAGE["ModelPackageArn"], "Approved")
    with stubber:  # no create_model / create_endpoint is stubbed: calling one would fail
        result = handle_aws_event(event, backend, lambda arn: described_package(approver),
                                  StageConfig("dev"), s3=object())  # fmt: skip
    stubber.assert_no_pending_responses()
    assert result["status"] == "Refused" and "reset to PendingManualApproval" in result["message"]
    ((topic, subject, message),) = outbox.messages
    assert topic == FAILURES_TOPIC and "four-eyes" in subject
    assert message["status"] == "Refused" and message["execution"] == PACKAGE["ModelPackageArn"]


def test_aws_production_job_fails_for_a_package_its_creator_approved():
    client = boto3.client("sagemaker", region_name="us-east-1")
    backend = SageMakerEndpointBackend(client, ROLE, endpoint_name="fraudops-prod-fraud",
                                       notifier=Outbox())  # fmt: skip
    stubber = expecting_reset(client)
    request = PromotionRequest(PACKAGE["ModelPackageArn"], 3, "staging", "config-3")
    body = request.to_zip()
    artifacts = Stubber(s3 := boto3.client("s3", region_name="us-east-1"))
    artifacts.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body))},
                           {"Bucket": "artifacts", "Key": "request.zip"})  # fmt: skip
    pipeline = Stubber(codepipeline := boto3.client("codepipeline", region_name="us-east-1"))
    pipeline.add_response("put_job_failure_result", {},
                          {"jobId": "job-1", "failureDetails": {"type": "JobFailed",
                                                                "message": ANY}})  # fmt: skip
    event = {"CodePipeline.job": {"id": "job-1", "data": {"inputArtifacts": [
        {"location": {"s3Location": {"bucketName": "artifacts", "objectKey": "request.zip"}}}]}}}
    approved_by_creator = described_package(CREATOR)
    with stubber, artifacts, pipeline:
        result = handle_codepipeline_job(event, backend, lambda arn: approved_by_creator,
                                         codepipeline, s3)  # fmt: skip
    assert result["status"] == "Failed" and "four-eyes" in result["message"]
    stubber.assert_no_pending_responses()
    pipeline.assert_no_pending_responses()


# --- fraudops serve ---------------------------------------------------------------


def test_serve_runs_the_approved_model_in_the_foreground(registry, workspace, model_dir):
    arn = register(registry, workspace, model_dir, "run-1")
    registry.update_model_package(arn, REJECTED, "bob", "not yet")
    assert main(["serve", "--version", "1", "--workdir", str(workspace.root)]) == 2

    arn = register(registry, workspace, model_dir, "run-2")
    LocalModelRegistry(workspace.registry_db).update_model_package(arn, APPROVED, "bob", "ok")
    workdir = str(workspace.root)
    command = [sys.executable, "-m", "pipelines.cli.main", "serve", "--port", "0", "--version", "2"]
    command += ["--workdir", workdir]
    # As from a terminal: a test run started in the background (`make test &`) ignores
    # SIGINT, its children inherit that, and Ctrl-C would never reach the server.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert "model version 2" in line
        assert 0.0 <= score(url) <= 1.0
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, _ = process.communicate(timeout=20)
        finally:
            process.kill()  # never leave a server behind when the assertion fails
    assert process.returncode == 0 and "stopped" in out


def test_a_stale_state_file_never_kills_an_unrelated_process(workspace):
    # After a reboot the recorded pid may belong to anything, here this test process.
    path = endpoint_state_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "model_package_arn": "arn:x",
                "version": 1,
                "pid": os.getpid(),
                "url": "http://127.0.0.1:9",
            }
        )
    )
    backend = LocalEndpointBackend(workspace)
    assert backend.current()["alive"] is False
    assert backend.stop()["version"] == 1  # forgets the record, kills nothing
    assert read_endpoint_state(workspace) is None
