"""AWS wiring end to end: deploy on approval, staging -> production promotion, retraining
schedule and failure notification, against moto (and botocore Stubber where moto lacks an
API: update_endpoint, CodePipeline job results, endpoints mid-deployment).

The infra/ templates are parsed, not trusted: alarm names, environment variables, rule
patterns and targets are resolved and checked against what the code uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from cfnlint.decode import decode
from moto import mock_aws
from moto.events.models import EventPattern

from lambdas.deploy.handler import handler as deploy_lambda
from lambdas.failure_notification.handler import handler as failure_lambda
from pipelines.cli import run_pipeline
from pipelines.core.events import MODEL_PACKAGE_STATE_CHANGE
from pipelines.serving.deploy.aws import SageMakerEndpointBackend, default_alarm_names
from pipelines.serving.deploy.on_approval import aws_backend_and_registry
from pipelines.serving.deploy.promotion import (
    DEFAULT_REQUEST_KEY,
    ENDPOINT_STATE_CHANGE,
    PromotionRequest,
    handle_aws_event,
)
from pipelines.serving.deploy.sample_model import SAMPLE_PARAMETERS, create_request

INFRA = Path(__file__).resolve().parent.parent / "infra"
REGION = "us-east-1"
ACCOUNT = "123456789012"
GROUP = "fraud-detection"
ARTIFACTS = "fraudops-staging-artifacts"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fraudops-sagemaker-execution"
EVALUATION = {"average_precision": 0.81, "roc_auc": 0.97, "passed": True}


# --- template helpers -------------------------------------------------------------------


def template(name: str) -> dict[str, Any]:
    parsed, matches = decode(str(INFRA / name))
    assert not matches
    return parsed


def resolve(value: Any, **names: str) -> Any:
    """Resolve Fn::Sub strings and parameter Refs with the given names, like CloudFormation.

    Other intrinsics (imports, GetAtt, Refs to resources) are left as they are.
    """
    names = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, **names}
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        text = value["Fn::Sub"]
        for key, replacement in names.items():
            text = text.replace("${" + key + "}", replacement)
        assert "${" not in text, f"unresolved name in {text}"
        return text
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in names:
        return names[value["Ref"]]
    if isinstance(value, dict):
        return {k: resolve(v, **names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, **names) for v in value]
    return value


def ml_resource(name: str) -> dict[str, Any]:
    return template("ml.yaml")["Resources"][name]["Properties"]


def stack_names(environment: str) -> dict[str, str]:
    return {"ProjectName": "fraudops", "Environment": environment, "PipelineName": GROUP,
            "ModelPackageGroupName": GROUP, "CodeVersion": "latest"}  # fmt: skip


# --- AWS fixtures -------------------------------------------------------------------------


class PartlyStubbed:
    """A moto-backed client whose ``operations`` are answered by a botocore Stubber.

    moto has no UpdateEndpoint and cannot show an endpoint mid-deployment; every
    other call still goes to moto, and the Stubber checks stubbed calls' parameters.
    """

    def __init__(self, real: Any, operations: set[str]):
        self._real = real
        self._stubbed = boto3.client(real.meta.service_model.service_name, region_name=REGION)
        self.stubber = Stubber(self._stubbed)
        self.stubber.activate()
        self._operations = operations

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stubbed if name in self._operations else self._real, name)


class Recording:
    """Records the calls made through a (stubbed) client, e.g. a continuation token sent."""

    def __init__(self, client: Any):
        self.client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return method(**kwargs)

        return call


@pytest.fixture
def aws(monkeypatch, sagemaker_decision):
    """moto with the artifacts bucket (versioned), the failures topic read through SQS;
    ``decide`` records decisions as made by a second person (four-eyes)."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=ARTIFACTS)
        s3.put_bucket_versioning(Bucket=ARTIFACTS, VersioningConfiguration={"Status": "Enabled"})
        sns = boto3.client("sns", region_name=REGION)
        topic = sns.create_topic(Name="fraudops-staging-pipeline-failures")["TopicArn"]
        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="failures")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_model_package_group(ModelPackageGroupName=GROUP)
        monkeypatch.setenv("FRAUDOPS_BACKEND", "aws")
        monkeypatch.setenv("EXECUTION_ROLE_ARN", ROLE)
        monkeypatch.setenv("FAILURES_TOPIC_ARN", topic)
        monkeypatch.setenv("PROMOTION_BUCKET", ARTIFACTS)
        monkeypatch.delenv("ROLLBACK_ALARM_NAMES", raising=False)

        def failures() -> list[dict[str, Any]]:
            received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
            return [
                json.loads(json.loads(m["Body"])["Message"]) for m in received.get("Messages", [])
            ]

        yield type("Aws", (), {"sm": sm, "s3": s3, "failures": staticmethod(failures),
                               "decide": staticmethod(sagemaker_decision)})


def stage(monkeypatch, environment: str) -> str:
    """Configure the deploy function as infra/ml.yaml does for ``environment``."""
    variables = resolve(
        ml_resource("DeployFunction")["Environment"]["Variables"], **stack_names(environment)
    )
    endpoint = variables["ENDPOINT_NAME"]
    monkeypatch.setenv("ENDPOINT_NAME", endpoint)
    monkeypatch.setenv("DEPLOY_STAGE", variables["DEPLOY_STAGE"])
    monkeypatch.setenv("PROMOTION_KEY", variables["PROMOTION_KEY"])
    return endpoint


def register(aws, status: str = "Approved", run: str = "run-1") -> str:
    """A model package with an evaluation report in S3, given an approval decision."""
    key = f"evaluation/{run}/evaluation.json"
    aws.s3.put_object(Bucket=ARTIFACTS, Key=key, Body=json.dumps(EVALUATION).encode())
    request = create_request(
        GROUP, f"s3://{ARTIFACTS}/models/{run}/model.tar.gz",
        evaluation_uri=f"s3://{ARTIFACTS}/{key}",
    )  # fmt: skip
    arn = aws.sm.create_model_package(**request)["ModelPackageArn"]
    aws.decide(aws.sm, arn, status)
    return arn


def decision(arn: str, status: str) -> dict[str, Any]:
    """A model package state-change event as EventBridge delivers it."""
    return {
        "version": "0", "id": "e1", "source": "aws.sagemaker", "account": ACCOUNT,
        "detail-type": MODEL_PACKAGE_STATE_CHANGE, "region": REGION, "resources": [arn],
        "detail": {"ModelPackageGroupName": GROUP, "ModelPackageArn": arn,
                   "ModelApprovalStatus": status},
    }  # fmt: skip


def endpoint_settled(endpoint: str, status: str = "InService") -> dict[str, Any]:
    """A SageMaker Endpoint State Change event as EventBridge delivers it."""
    return {
        "version": "0", "id": "e2", "source": "aws.sagemaker", "account": ACCOUNT,
        "detail-type": ENDPOINT_STATE_CHANGE, "region": REGION,
        "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{endpoint}"],
        "detail": {"EndpointName": endpoint, "EndpointStatus": status, "Tags": {}},
    }  # fmt: skip


def serving_package(sm, endpoint: str) -> str:
    config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    return sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["ModelPackageName"]


def request_versions(s3) -> list[dict[str, Any]]:
    listed = s3.list_object_versions(Bucket=ARTIFACTS, Prefix=DEFAULT_REQUEST_KEY)
    return listed.get("Versions", [])


def read_request(s3) -> PromotionRequest:
    body = s3.get_object(Bucket=ARTIFACTS, Key=DEFAULT_REQUEST_KEY)["Body"].read()
    return PromotionRequest.from_zip(body, DEFAULT_REQUEST_KEY)


def backend_with(client: Any) -> tuple[SageMakerEndpointBackend, Any]:
    """The Lambda's backend and registry reader, with ``client`` for endpoint calls."""
    backend, describe = aws_backend_and_registry()
    backend.client = client
    return backend, describe


def blue_green_update(endpoint: str) -> dict[str, Any]:
    """The UpdateEndpoint call the template's configuration must produce."""
    return {
        "EndpointName": endpoint,
        "EndpointConfigName": ANY,
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "ALL_AT_ONCE",
                    "WaitIntervalInSeconds": 300,
                },
                "TerminationWaitInSeconds": 300,
            },
            "AutoRollbackConfiguration": {
                "Alarms": [
                    {"AlarmName": f"{endpoint}-invocation-5xx-errors"},
                    {"AlarmName": f"{endpoint}-model-latency"},
                ]
            },
        },
    }


# --- infra: alarms, environment, rules ------------------------------------------------------


def test_rollback_alarms_are_the_ones_the_deploy_function_names(monkeypatch):
    names = stack_names("prod")
    endpoint = resolve(ml_resource("DeployFunction")["Environment"]["Variables"], **names)[
        "ENDPOINT_NAME"
    ]
    alarms = {
        resolve(ml_resource(r)["AlarmName"], **names): ml_resource(r)
        for r in ("EndpointErrorsAlarm", "EndpointLatencyAlarm")
    }
    assert sorted(alarms) == sorted(default_alarm_names(endpoint))
    for alarm in alarms.values():
        dimensions = {d["Name"]: resolve(d["Value"], **names) for d in alarm["Dimensions"]}
        assert dimensions == {"EndpointName": endpoint, "VariantName": "AllTraffic"}
        assert alarm["Namespace"] == "AWS/SageMaker"
    by_metric = {a["MetricName"]: a for a in alarms.values()}
    assert set(by_metric) == {"Invocation5XXErrors", "ModelLatency"}
    assert by_metric["ModelLatency"]["ExtendedStatistic"] == "p99"

    # The function's ROLLBACK_ALARM_NAMES joins exactly these two alarms (Ref = alarm name).
    joined = ml_resource("DeployFunction")["Environment"]["Variables"]["ROLLBACK_ALARM_NAMES"]
    assert joined == {"Fn::Join": [",", [{"Ref": "EndpointErrorsAlarm"},
                                         {"Ref": "EndpointLatencyAlarm"}]]}  # fmt: skip
    refs = {"EndpointErrorsAlarm": default_alarm_names(endpoint)[0],
            "EndpointLatencyAlarm": default_alarm_names(endpoint)[1]}  # fmt: skip
    monkeypatch.setenv(
        "ROLLBACK_ALARM_NAMES", ",".join(refs[r["Ref"]] for r in joined["Fn::Join"][1])
    )
    monkeypatch.setenv("EXECUTION_ROLE_ARN", ROLE)
    monkeypatch.setenv("ENDPOINT_NAME", endpoint)
    backend = SageMakerEndpointBackend.from_environment(client=object())
    rollback = backend.deployment_config()["AutoRollbackConfiguration"]["Alarms"]
    assert [a["AlarmName"] for a in rollback] == default_alarm_names(endpoint)


@mock_aws
def test_the_template_alarms_are_accepted_by_cloudwatch():
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    names = {**stack_names("staging"), "LatencyAlarmMicroseconds": "200000"}
    for resource in ("EndpointErrorsAlarm", "EndpointLatencyAlarm"):
        props = resolve(ml_resource(resource), **names)
        props["Threshold"] = float(props["Threshold"])
        cloudwatch.put_metric_alarm(**props)
    found = cloudwatch.describe_alarms(AlarmNames=default_alarm_names("fraudops-staging-fraud"))
    assert len(found["MetricAlarms"]) == 2


def test_the_rules_match_the_events_aws_sends():
    names = stack_names("staging")

    def matches(rule: str, event: dict[str, Any]) -> bool:
        # moto's EventBridge matcher (moto has no TestEventPattern API).
        pattern = resolve(ml_resource(rule)["EventPattern"], **names)
        return EventPattern.load(json.dumps(pattern)).matches_event(event)

    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/1"
    assert matches("ApprovalRule", decision(arn, "Approved"))
    assert matches("ApprovalRule", decision(arn, "Rejected"))
    assert not matches("ApprovalRule", decision(arn, "PendingManualApproval"))
    assert matches("EndpointStateRule", endpoint_settled("fraudops-staging-fraud"))
    assert not matches("EndpointStateRule", endpoint_settled("fraudops-staging-fraud", "Updating"))
    assert not matches("EndpointStateRule", endpoint_settled("someone-elses-endpoint"))
    assert matches("PipelineFailureRule", step_failed_event())
    assert ml_resource("EndpointStateRule")["Targets"][0]["Arn"] == {
        "Fn::GetAtt": ["DeployFunction", "Arn"]
    }


def test_promotion_pipeline_reads_the_request_staging_writes_and_invokes_production():
    cicd = template("cicd.yaml")
    stages = cicd["Resources"]["Promotion"]["Properties"]["Stages"]
    assert [s["Name"] for s in stages] == ["StagingDeployed", "ApproveProduction",
                                           "DeployProduction"]  # fmt: skip
    (source,), (approval,), (deploy,) = (s["Actions"] for s in stages)
    staging = resolve(ml_resource("DeployFunction"), **stack_names("staging"))
    assert (
        source["Configuration"]["S3ObjectKey"]
        == staging["Environment"]["Variables"]["PROMOTION_KEY"]
        == DEFAULT_REQUEST_KEY
    )
    assert (
        source["Configuration"]["S3Bucket"]
        == ml_resource("DeployFunction")["Environment"]["Variables"]["PROMOTION_BUCKET"]
    )  # the same stack export
    assert source["Configuration"]["PollForSourceChanges"] is True  # writing it starts promotion
    assert approval["ActionTypeId"]["Provider"] == "Manual"
    production = resolve(ml_resource("DeployFunction"), **stack_names("prod"))
    assert deploy["Configuration"]["FunctionName"] == {"Ref": "ProductionDeployFunctionName"}
    assert (
        cicd["Parameters"]["ProductionDeployFunctionName"]["Default"] == production["FunctionName"]
    )
    assert deploy["InputArtifacts"] == source["OutputArtifacts"] == [{"Name": "Request"}]


# --- deploy on approval (dev/staging) ---------------------------------------------------------


def test_rejected_model_makes_no_endpoint_call_at_all(aws, monkeypatch):
    endpoint = stage(monkeypatch, "staging")
    arn = register(aws, status="Rejected")
    strict = boto3.client("sagemaker", region_name=REGION)
    backend, describe = backend_with(strict)
    with Stubber(strict) as stubber:  # no responses queued: any SageMaker call would fail
        result = handle_aws_event(decision(arn, "Rejected"), backend, describe)
        stubber.assert_no_pending_responses()
    assert result["status"] == "Skipped" and "Rejected" in result["message"]
    # Through the Lambda too: nothing is created.
    assert deploy_lambda(decision(arn, "Rejected"), None)["status"] == "Skipped"
    assert aws.sm.list_models()["Models"] == []
    assert aws.sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert aws.sm.list_endpoints()["Endpoints"] == []
    assert request_versions(aws.s3) == []
    assert endpoint not in json.dumps(aws.failures())


def test_staging_first_approval_creates_the_endpoint_then_requests_promotion(aws, monkeypatch):
    endpoint = stage(monkeypatch, "staging")
    arn = register(aws)
    started = deploy_lambda(decision(arn, "Approved"), None)
    assert started["status"] == "Updating" and "creating" in started["message"]
    assert serving_package(aws.sm, endpoint) == arn
    assert request_versions(aws.s3) == []  # nothing is promoted before the endpoint settles

    settled = deploy_lambda(endpoint_settled(endpoint), None)
    assert settled["status"] == "InService" and "awaits approval" in settled["message"]
    request = read_request(aws.s3)
    assert request.model_package_arn == arn
    assert request.staging_endpoint == endpoint
    assert (
        request.endpoint_config_name
        == aws.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    )
    assert request.evaluation["statistics"] == EVALUATION
    assert request.evaluation["approval_status"] == "Approved"

    # SageMaker sends several events per change: the outcome is acted on once.
    again = deploy_lambda(endpoint_settled(endpoint), None)
    assert again["status"] == "Skipped"
    assert len(request_versions(aws.s3)) == 1
    assert aws.failures() == []


def test_dev_deploys_but_never_requests_promotion(aws, monkeypatch):
    endpoint = stage(monkeypatch, "dev")
    deploy_lambda(decision(register(aws), "Approved"), None)
    assert deploy_lambda(endpoint_settled(endpoint), None)["status"] == "InService"
    assert request_versions(aws.s3) == []


def test_the_stream_reads_the_run_parameters_of_the_package_the_deploy_handler_served(
    aws, monkeypatch
):
    """Approval -> deploy handler -> endpoint; the stream Lambda's lookup (with the stream
    function's environment from infra/ml.yaml) finds the package's threshold and delay."""
    from pipelines.serving.stream.models import DeployedModelLookup

    endpoint = stage(monkeypatch, "dev")
    arn = aws.sm.create_model_package(**create_request(GROUP, "s3://a/model.tar.gz"))[
        "ModelPackageArn"]
    # moto's UpdateModelPackage replaces the metadata (SageMaker merges it): send it again.
    aws.decide(aws.sm, arn, "Approved", CustomerMetadataProperties=SAMPLE_PARAMETERS.as_metadata())
    deploy_lambda(decision(arn, "Approved"), None)
    variables = resolve(ml_resource("StreamScoringFunction")["Environment"]["Variables"],
                        **stack_names("dev"))
    assert variables["ENDPOINT_NAME"] == endpoint
    assert not {"ALERT_THRESHOLD", "LABEL_DELAY_DAYS", "MODEL_VERSION"} & set(variables)
    deployed = DeployedModelLookup(aws.sm, variables["ENDPOINT_NAME"]).current()
    assert deployed.package_arn == arn == serving_package(aws.sm, endpoint)
    assert deployed.parameters == SAMPLE_PARAMETERS
    assert deployed.version == 1


def first_deployment(aws, monkeypatch) -> tuple[str, str, str]:
    """Staging endpoint serving version 1 (promoted); returns endpoint, its config, v1 ARN."""
    endpoint = stage(monkeypatch, "staging")
    v1 = register(aws, run="run-1")
    deploy_lambda(decision(v1, "Approved"), None)
    deploy_lambda(endpoint_settled(endpoint), None)
    return endpoint, aws.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"], v1


def test_second_approval_is_blue_green_and_an_alarm_rollback_is_notified(aws, monkeypatch):
    endpoint, v1_config, v1 = first_deployment(aws, monkeypatch)
    v2 = register(aws, run="run-2")
    client = PartlyStubbed(aws.sm, {"update_endpoint"})
    client.stubber.add_response(
        "update_endpoint", {"EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/x"},
        blue_green_update(endpoint),
    )  # fmt: skip
    backend, describe = backend_with(client)
    started = handle_aws_event(decision(v2, "Approved"), backend, describe)
    client.stubber.assert_no_pending_responses()
    assert started["status"] == "Updating" and "blue/green" in started["message"]

    # SageMaker baked the new fleet, an alarm fired, and it returned to v1's config.
    settled = handle_aws_event(endpoint_settled(endpoint), backend, describe)
    assert settled["status"] == "RolledBack" and settled["model_package_arn"] == v2
    assert v1_config in settled["message"]
    assert serving_package(aws.sm, endpoint) == v1
    (failure,) = aws.failures()
    assert failure["stage"] == "deploy" and failure["execution"] == v2
    assert failure["step"] == endpoint and failure["status"] == "RolledBack"
    assert read_request(aws.s3).model_package_arn == v1  # the failed version is not promoted
    assert len(request_versions(aws.s3)) == 1


def test_an_update_sagemaker_refuses_leaves_the_previous_config_serving(aws, monkeypatch):
    endpoint, v1_config, v1 = first_deployment(aws, monkeypatch)
    v2 = register(aws, run="run-2")
    client = PartlyStubbed(aws.sm, {"update_endpoint"})
    client.stubber.add_client_error(
        "update_endpoint", "ValidationException", "Cannot update in-progress endpoint"
    )
    backend, describe = backend_with(client)
    result = handle_aws_event(decision(v2, "Approved"), backend, describe)
    assert result["status"] == "RolledBack"
    assert (
        "Cannot update in-progress endpoint" in result["message"] and v1_config in result["message"]
    )
    assert aws.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == v1_config
    (failure,) = aws.failures()
    assert failure["execution"] == v2 and "refused" in failure["error"]
    # Nothing is in flight, so the next endpoint event changes nothing.
    assert handle_aws_event(endpoint_settled(endpoint), backend, describe)["status"] == "Skipped"


# --- production: the CodePipeline Lambda action -----------------------------------------------


def job_event(job_id: str, key: str, token: str | None = None) -> dict[str, Any]:
    """The event CodePipeline's Lambda invoke action sends (shape of the AWS docs example)."""
    data: dict[str, Any] = {
        "actionConfiguration": {"configuration": {"FunctionName": "fraudops-prod-deploy"}},
        "inputArtifacts": [{
            "name": "Request", "revision": "v1",
            "location": {"type": "S3", "s3Location": {"bucketName": ARTIFACTS, "objectKey": key}},
        }],
        "outputArtifacts": [],
        "artifactCredentials": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "secret",
                                "sessionToken": "token"},
    }  # fmt: skip
    if token:
        data["continuationToken"] = token
    return {"CodePipeline.job": {"id": job_id, "accountId": ACCOUNT, "data": data}}


def pipeline_artifact(aws, arn: str, body: bytes | None = None) -> str:
    """The promotion request as CodePipeline stores the source output artifact."""
    key = "fraudops-staging-pro/Request/AbCdEf1"
    request = PromotionRequest(arn, 1, "fraudops-staging-fraud", "cfg", {"passed": True})
    aws.s3.put_object(Bucket=ARTIFACTS, Key=key, Body=body or request.to_zip())
    return key


def endpoint_description(endpoint: str, status: str, config: str, reason: str = "") -> dict:
    described = {
        "EndpointName": endpoint,
        "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{endpoint}",
        "EndpointConfigName": config, "EndpointStatus": status,
        "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    if reason:
        described["FailureReason"] = reason
    return described


@pytest.fixture
def production(aws, monkeypatch):
    """The production deploy function's backend (endpoint mid-deployment stubbed) and pipeline."""
    endpoint = stage(monkeypatch, "prod")
    client = PartlyStubbed(aws.sm, {"update_endpoint", "describe_endpoint"})
    backend, describe = backend_with(client)
    codepipeline = boto3.client("codepipeline", region_name=REGION)
    pipeline_stubber = Stubber(codepipeline)
    pipeline_stubber.activate()
    recorded = Recording(codepipeline)
    yield type("Production", (), {
        "endpoint": endpoint, "sagemaker": client.stubber, "pipeline": pipeline_stubber,
        "run": staticmethod(lambda event: handle_aws_event(
            event, backend, describe, codepipeline=recorded)),
        "calls": recorded.calls,
    })  # fmt: skip


def start_production_deployment(aws, production) -> tuple[str, str, str]:
    """First invocation: deploys the requested package, answers with a continuation token."""
    arn = register(aws)
    key = pipeline_artifact(aws, arn)
    production.sagemaker.add_response(
        "describe_endpoint", endpoint_description(production.endpoint, "InService", "old-config"),
        {"EndpointName": production.endpoint},
    )  # fmt: skip
    production.sagemaker.add_response(
        "update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
        blue_green_update(production.endpoint),
    )  # fmt: skip
    production.pipeline.add_response(
        "put_job_success_result", {}, {"jobId": "job-1", "continuationToken": ANY}
    )
    result = production.run(job_event("job-1", key))
    assert result["status"] == "Updating"
    ((_, sent),) = production.calls
    configs = aws.sm.list_endpoint_configs()["EndpointConfigs"]
    (config,) = [c["EndpointConfigName"] for c in configs]
    assert aws.sm.describe_endpoint_config(EndpointConfigName=config)  # created by moto
    return key, sent["continuationToken"], config


def test_production_job_deploys_the_requested_package_and_reports_success(aws, production):
    key, token, config = start_production_deployment(aws, production)
    # Still shifting traffic: CodePipeline is asked to invoke again with the same token.
    production.sagemaker.add_response(
        "describe_endpoint", endpoint_description(production.endpoint, "Updating", "old-config"),
        {"EndpointName": production.endpoint},
    )  # fmt: skip
    production.pipeline.add_response(
        "put_job_success_result", {}, {"jobId": "job-1", "continuationToken": token}
    )
    assert production.run(job_event("job-1", key, token))["status"] == "Updating"
    # Baked without an alarm: the new config serves, the job succeeds without a token.
    production.sagemaker.add_response(
        "describe_endpoint", endpoint_description(production.endpoint, "InService", config),
        {"EndpointName": production.endpoint},
    )  # fmt: skip
    production.pipeline.add_response(
        "put_job_success_result", {}, {"jobId": "job-1", "executionDetails": ANY}
    )
    assert production.run(job_event("job-1", key, token))["status"] == "InService"
    production.pipeline.assert_no_pending_responses()
    production.sagemaker.assert_no_pending_responses()
    (model,) = aws.sm.list_models()["Models"]
    container = aws.sm.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]
    assert container["ModelPackageName"] == json.loads(token)["model_package_arn"]
    assert aws.failures() == []


def test_production_rollback_fails_the_job_and_notifies(aws, production):
    key, token, config = start_production_deployment(aws, production)
    reason = f"Alarm {production.endpoint}-invocation-5xx-errors went to ALARM; rolled back"
    production.sagemaker.add_response(
        "describe_endpoint",
        endpoint_description(production.endpoint, "InService", "old-config", reason),
        {"EndpointName": production.endpoint},
    )
    production.pipeline.add_response(
        "put_job_failure_result", {},
        {"jobId": "job-1", "failureDetails": {"type": "JobFailed", "message": ANY}},
    )  # fmt: skip
    result = production.run(job_event("job-1", key, token))
    production.pipeline.assert_no_pending_responses()
    assert result["status"] == "RolledBack" and "old-config keeps serving" in result["message"]
    (_, sent) = production.calls[-1]
    assert reason in sent["failureDetails"]["message"]
    (failure,) = aws.failures()
    assert failure["step"] == production.endpoint and reason in failure["error"]


def test_production_refuses_a_package_rejected_since_staging(aws, production):
    arn = register(aws, status="Rejected")
    key = pipeline_artifact(aws, arn)
    production.pipeline.add_response(
        "put_job_failure_result", {},
        {"jobId": "job-2", "failureDetails": {"type": "JobFailed", "message": ANY}},
    )  # fmt: skip
    result = production.run(job_event("job-2", key))
    assert result["status"] == "Failed" and "Rejected" in result["message"]
    assert aws.sm.list_models()["Models"] == []
    production.pipeline.assert_no_pending_responses()


def test_production_reports_an_unreadable_request_to_the_pipeline(aws, production):
    key = pipeline_artifact(aws, "unused", body=b"not a zip")
    production.pipeline.add_response(
        "put_job_failure_result", {},
        {"jobId": "job-3", "failureDetails": {"type": "JobFailed", "message": ANY}},
    )  # fmt: skip
    result = production.run(job_event("job-3", key))
    assert f"s3://{ARTIFACTS}/{key}" in result["message"] and "request.json" in result["message"]
    production.pipeline.assert_no_pending_responses()


def test_production_ignores_registry_decisions_without_the_manual_gate(aws, production):
    result = production.run(decision(register(aws), "Approved"))
    assert result["status"] == "Skipped" and "promote-to-production" in result["message"]
    assert aws.sm.list_models()["Models"] == []


# --- retraining schedule --------------------------------------------------------------------


def test_retrain_schedule_starts_the_pipeline_run_pipeline_creates(monkeypatch):
    names = stack_names("prod")
    rule = ml_resource("RetrainScheduleRule")
    (target,) = rule["Targets"]
    target_arn = resolve(target["Arn"], **names)
    parameters = target["SageMakerPipelineParameters"]["PipelineParameterList"]
    assert parameters == [{"Name": "ModelApprovalStatus", "Value": "PendingManualApproval"}]
    assert target["RoleArn"] == {"Fn::GetAtt": ["RetrainScheduleRole", "Arn"]}
    role = ml_resource("RetrainScheduleRole")
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert [(s["Effect"], s["Action"], resolve(s["Resource"], **names)) for s in statements] == [
        ("Allow", "sagemaker:StartPipelineExecution", target_arn)
    ]

    monkeypatch.setattr(run_pipeline, "_step_statuses", lambda client, arn: {})
    with mock_aws():
        sm = boto3.client("sagemaker", region_name=REGION)
        assert run_pipeline.main([
            "--backend", "aws", "--module-name", "pipelines.fraud.pipeline",
            "--role-arn", ROLE, "--no-wait",
            "--kwargs", json.dumps({"region": REGION, "role": ROLE, "default_bucket": ARTIFACTS,
                                    "pipeline_name": GROUP}),
        ]) == 0  # fmt: skip
        created = sm.describe_pipeline(PipelineName=GROUP)
        assert created["PipelineArn"] == target_arn
        declared = {p["Name"] for p in json.loads(created["PipelineDefinition"])["Parameters"]}
        assert {p["Name"] for p in parameters} <= declared
        # What EventBridge does with the rule's role on schedule.
        started = sm.start_pipeline_execution(
            PipelineName=target_arn.rsplit("/", 1)[-1], PipelineParameters=parameters
        )
        given = sm.list_pipeline_parameters_for_execution(
            PipelineExecutionArn=started["PipelineExecutionArn"]
        )["PipelineParameters"]
        assert {"Name": "ModelApprovalStatus", "Value": "PendingManualApproval"} in given


# --- failure notification -------------------------------------------------------------------


def step_failed_event() -> dict[str, Any]:
    """A failed pipeline step as EventBridge delivers it (AWS docs example shape)."""
    execution = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{GROUP}/execution/abc123"
    return {
        "version": "0", "id": "e3", "source": "aws.sagemaker", "account": ACCOUNT,
        "detail-type": "SageMaker Model Building Pipeline Execution Step Status Change",
        "region": REGION, "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{GROUP}",
                                        execution],
        "detail": {
            "executionStepArn": f"{execution}/step/Train", "stepName": "Train",
            "stepStartTime": "2026-01-01T03:00:00Z", "stepEndTime": "2026-01-01T03:20:00Z",
            "stepType": "Training", "previousStepStatus": "Executing",
            "currentStepStatus": "Failed", "failureReason": "ClientError: AlgorithmError: OOM",
            "pipelineArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{GROUP}",
            "pipelineExecutionArn": execution,
            "metadata": {"trainingJob": {"arn": "x"}, "TrainingJob": {
                "Arn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/pipelines-abc-Train"}},
        },
    }  # fmt: skip


def test_a_failed_step_reaches_the_failures_topic(aws):
    sent = failure_lambda(step_failed_event(), None)
    (message,) = aws.failures()
    assert message == sent
    assert message["execution"].endswith("/execution/abc123")
    assert message["step"] == "Train"
    assert message["error"] == "ClientError: AlgorithmError: OOM"
    assert "pipelines-abc-Train" in message["log"]
