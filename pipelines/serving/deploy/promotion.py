"""Staging -> production promotion of a deployed model, as in the SageMaker model-deploy template.

One deploy Lambda per environment, told apart by ``DEPLOY_STAGE``:

* ``dev`` and ``staging``: an ``Approved`` model-package event starts a
  blue/green deployment and tags the endpoint with the config in flight. When
  SageMaker reports the endpoint settled (``SageMaker Endpoint State Change``),
  the same Lambda looks at the outcome: serving the new config is a success,
  anything else is a rollback or failure and is notified. In ``staging`` a
  success also writes the promotion request (``promotion/request.zip``: model
  package, endpoint, evaluation summary) to the artifacts bucket. That key is
  the polled S3 source of the ``promote-to-production`` CodePipeline, so the
  new version starts it and it waits at its manual approval. ``dev`` never
  promotes.
* ``prod``: CodePipeline invokes the Lambda (event with ``CodePipeline.job``)
  after the approval. It reads the request from the input artifact, deploys that
  exact package with the same blue/green logic, and reports back: a continuation
  token while SageMaker is still shifting traffic (CodePipeline invokes it again),
  success once the new config serves, failure on a rollback.

Every stage refuses a package approved by the principal that created it
(four-eyes, ``SageMakerEndpointBackend.refuse_self_approval``): nothing
deploys, the package goes back to ``PendingManualApproval`` and the failures
topic is told; in ``prod`` the pipeline job fails with the reason.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pipelines.model.registry import APPROVED
from pipelines.serving.deploy.aws import SageMakerEndpointBackend
from pipelines.serving.deploy.backend import IN_SERVICE, SKIPPED, UPDATING, DeploymentResult
from pipelines.serving.deploy.on_approval import (
    Describe,
    EventError,
    handle_state_change,
    package_arn_of,
)

ENDPOINT_STATE_CHANGE = "SageMaker Endpoint State Change"
CODEPIPELINE_JOB = "CodePipeline.job"
DEFAULT_REQUEST_KEY = "promotion/request.zip"
REQUEST_MEMBER = "request.json"
STAGES = ("dev", "staging", "prod")
MAX_EVALUATION_BYTES = 256 * 1024  # a summary for the approver, not a data set


class PromotionError(RuntimeError):
    """A promotion request or pipeline job that cannot be acted on."""


@dataclass(frozen=True)
class StageConfig:
    """Which environment this deploy function serves and where promotions go."""

    stage: str = "dev"
    request_bucket: str | None = None
    request_key: str = DEFAULT_REQUEST_KEY

    @classmethod
    def from_environment(cls) -> StageConfig:
        """``DEPLOY_STAGE`` (dev|staging|prod), ``PROMOTION_BUCKET``, ``PROMOTION_KEY``."""
        stage = os.environ.get("DEPLOY_STAGE", "dev")
        if stage not in STAGES:
            raise PromotionError(f"DEPLOY_STAGE is {stage!r}; set it to one of {STAGES}")
        config = cls(
            stage=stage,
            request_bucket=os.environ.get("PROMOTION_BUCKET") or None,
            request_key=os.environ.get("PROMOTION_KEY", DEFAULT_REQUEST_KEY),
        )
        if stage == "staging" and not config.request_bucket:
            raise PromotionError(
                "DEPLOY_STAGE=staging needs PROMOTION_BUCKET (the artifacts bucket the "
                "promote-to-production pipeline reads its source from)"
            )
        return config


@dataclass(frozen=True)
class PromotionRequest:
    """What the person approving production sees, and what production deploys."""

    model_package_arn: str
    model_package_version: int | None
    staging_endpoint: str
    endpoint_config_name: str
    evaluation: dict[str, Any] = field(default_factory=dict)
    requested_at: str = ""

    def to_zip(self) -> bytes:
        """The CodePipeline S3 source object: a zip holding ``request.json``."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(REQUEST_MEMBER, json.dumps(asdict(self), indent=2, default=str))
        return buffer.getvalue()

    @classmethod
    def from_zip(cls, data: bytes, where: str) -> PromotionRequest:
        """Parse a request zip; ``where`` names its location in errors."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                payload = json.loads(archive.read(REQUEST_MEMBER))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise PromotionError(
                f"{where} is not a promotion request (a zip holding {REQUEST_MEMBER}): {exc}"
            ) from exc
        if not isinstance(payload, dict) or not payload.get("model_package_arn"):
            raise PromotionError(f"{where}: {REQUEST_MEMBER} names no model_package_arn")
        known = {name: payload.get(name) for name in cls.__dataclass_fields__ if name in payload}
        return cls(**known)


def evaluation_summary(package: dict[str, Any], s3: Any) -> dict[str, Any]:
    """The package's evaluation for the approver: metadata, report URI and its contents."""
    statistics = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
    summary: dict[str, Any] = {
        "approval_status": package.get("ModelApprovalStatus"),
        "description": package.get("ModelPackageDescription", ""),
        "metadata": package.get("CustomerMetadataProperties", {}),
        "statistics_uri": statistics.get("S3Uri"),
    }
    uri = statistics.get("S3Uri")
    if uri and uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        # A missing or unreadable report must not block promotion: the approver
        # sees why it is absent instead.
        try:
            body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{MAX_EVALUATION_BYTES}")
            summary["statistics"] = json.loads(body["Body"].read())
        except Exception as exc:  # noqa: BLE001 - any S3 or JSON error is reported, not raised
            summary["statistics_error"] = f"could not read {uri}: {exc}"
    return summary


def request_promotion(request: PromotionRequest, config: StageConfig, s3: Any) -> str:
    """Write the request where the promotion pipeline's S3 source reads it.

    The source polls that key (infra/cicd.yaml), so the new object version
    starts the pipeline, which stops at its manual approval. Returns the
    object's version id (the bucket is versioned), which the pipeline's
    source revision shows.
    """
    written = s3.put_object(
        Bucket=config.request_bucket,
        Key=config.request_key,
        Body=request.to_zip(),
        ContentType="application/zip",
    )
    return str(written.get("VersionId") or "unversioned")


@dataclass
class _RecordingBackend:
    """The SageMaker backend, also tagging the endpoint with the deployment in flight."""

    backend: SageMakerEndpointBackend

    @property
    def name(self) -> str:
        return self.backend.name

    def deploy(self, package: dict[str, Any]) -> DeploymentResult:
        result, config_name = self.backend.start_deployment(package)
        if result.status == UPDATING:
            self.backend.record_target(package, config_name)
        return result

    def skip(self, package: dict[str, Any], reason: str) -> DeploymentResult:
        return self.backend.skip(package, reason)

    def current(self) -> dict[str, Any] | None:
        return self.backend.current()


def handle_endpoint_state_change(
    event: dict[str, Any],
    backend: SageMakerEndpointBackend,
    describe: Describe,
    config: StageConfig,
    s3: Any,
) -> DeploymentResult:
    """Act once on the outcome of the deployment in flight on this endpoint."""
    endpoint = (event.get("detail") or {}).get("EndpointName")
    if endpoint != backend.endpoint_name:
        raise EventError(
            f"endpoint state change for {endpoint!r}; this function deploys "
            f"{backend.endpoint_name!r}"
        )
    pending = backend.pending()
    if pending is None:
        return DeploymentResult(
            status=SKIPPED,
            model_package_arn="",
            endpoint_name=endpoint,
            message="no deployment awaits an outcome on this endpoint",
        )
    package_arn, config_name = pending
    package = describe(package_arn)
    result = backend.outcome(package, config_name)
    if result.status == UPDATING:
        return result  # SageMaker sends another event when it settles
    if result.status == IN_SERVICE and config.stage == "staging":
        request = PromotionRequest(
            model_package_arn=package_arn,
            model_package_version=package.get("ModelPackageVersion"),
            staging_endpoint=backend.endpoint_name,
            endpoint_config_name=config_name,
            evaluation=evaluation_summary(package, s3),
            requested_at=datetime.now(UTC).isoformat(),
        )
        version = request_promotion(request, config, s3)
        result = replace(
            result,
            message=f"{result.message}; promotion request s3://{config.request_bucket}/"
            f"{config.request_key} (version {version}) awaits approval for production",
        )
    backend.mark_settled(config_name)
    return result


def handle_codepipeline_job(
    event: dict[str, Any],
    backend: SageMakerEndpointBackend,
    describe: Describe,
    codepipeline: Any,
    artifact_s3: Any = None,
) -> dict[str, Any]:
    """Production deploy as a CodePipeline Lambda action; always reports the job's result.

    ``artifact_s3`` reads the input artifact; by default an S3 client with the
    job's ``artifactCredentials``. The event is never logged: it holds them.
    """
    job = event[CODEPIPELINE_JOB]
    job_id = job["id"]
    data = job.get("data") or {}
    try:
        result, token = _advance_job(data, backend, describe, artifact_s3)
    except Exception as exc:  # noqa: BLE001 - the pipeline must hear of every failure
        message = f"{type(exc).__name__}: {exc}"
        _report_failure(codepipeline, job_id, message)
        return {"job_id": job_id, "status": "Failed", "message": message}
    if result.status == UPDATING:
        codepipeline.put_job_success_result(jobId=job_id, continuationToken=token)
    elif result.status == IN_SERVICE:
        codepipeline.put_job_success_result(
            jobId=job_id, executionDetails={"summary": result.message[:2048]}
        )
    else:
        _report_failure(codepipeline, job_id, result.message)
    return {"job_id": job_id, **result.as_dict()}


def _advance_job(
    data: dict[str, Any],
    backend: SageMakerEndpointBackend,
    describe: Describe,
    artifact_s3: Any,
) -> tuple[DeploymentResult, str]:
    """Start the deployment (first invocation) or check on it (continuations)."""
    token = data.get("continuationToken")
    if token:
        state = json.loads(token)
        package = describe(state["model_package_arn"])
        return backend.outcome(package, state["endpoint_config_name"]), token
    request = read_job_request(data, artifact_s3)
    package = describe(request.model_package_arn)
    status = package.get("ModelApprovalStatus")
    if status != APPROVED:
        raise PromotionError(
            f"model package {request.model_package_arn} is {status} now; "
            "production deploys approved packages only"
        )
    refusal = backend.refuse_self_approval(package)
    if refusal is not None:
        raise PromotionError(refusal.message)
    result, config_name = backend.start_deployment(package)
    token = json.dumps(
        {"model_package_arn": request.model_package_arn, "endpoint_config_name": config_name}
    )
    return result, token


def read_job_request(data: dict[str, Any], artifact_s3: Any = None) -> PromotionRequest:
    """The promotion request in the job's (single) input artifact."""
    artifacts = data.get("inputArtifacts") or []
    if not artifacts:
        raise PromotionError("the CodePipeline job has no input artifact (the promotion request)")
    location = artifacts[0]["location"]["s3Location"]
    bucket, key = location["bucketName"], location["objectKey"]
    s3 = artifact_s3 or _artifact_client(data.get("artifactCredentials") or {})
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return PromotionRequest.from_zip(body, f"s3://{bucket}/{key}")


def _artifact_client(credentials: dict[str, str]) -> Any:
    """S3 client with the pipeline's temporary artifact credentials (SigV4 for KMS objects)."""
    import boto3
    from botocore.config import Config

    if not credentials:
        return boto3.client("s3", config=Config(signature_version="s3v4"))
    return boto3.client(
        "s3",
        aws_access_key_id=credentials["accessKeyId"],
        aws_secret_access_key=credentials["secretAccessKey"],
        aws_session_token=credentials.get("sessionToken"),
        config=Config(signature_version="s3v4"),
    )


def _report_failure(codepipeline: Any, job_id: str, message: str) -> None:
    codepipeline.put_job_failure_result(
        jobId=job_id, failureDetails={"type": "JobFailed", "message": message[:5000]}
    )


def handle_aws_event(
    event: dict[str, Any],
    backend: SageMakerEndpointBackend,
    describe: Describe,
    config: StageConfig | None = None,
    s3: Any = None,
    codepipeline: Any = None,
) -> dict[str, Any]:
    """Route one event of the deploy Lambda on AWS to its handler."""
    import boto3

    config = config or StageConfig.from_environment()
    if CODEPIPELINE_JOB in event:
        codepipeline = codepipeline or boto3.client("codepipeline")
        return handle_codepipeline_job(event, backend, describe, codepipeline)
    s3 = s3 or boto3.client("s3")
    if event.get("detail-type") == ENDPOINT_STATE_CHANGE:
        result = handle_endpoint_state_change(event, backend, describe, config, s3)
    elif config.stage == "prod":
        # The manual gate: production never deploys straight from a registry decision.
        result = DeploymentResult(
            status=SKIPPED,
            model_package_arn=package_arn_of(event),
            endpoint_name=backend.endpoint_name,
            message="production deploys only through the promote-to-production pipeline",
        )
    else:
        result = handle_state_change(
            event, _RecordingBackend(backend), describe, guard=backend.refuse_self_approval
        )
    return result.as_dict()
