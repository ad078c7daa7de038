"""Turn a failure event from any stage into one notification people can act on.

Handles the events AWS emits for a failed SageMaker pipeline step, a failed
Glue job run and a failed Step Functions execution, and the local runner's
equivalent; each becomes: which execution, which step, what error, where the log is.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.notifications import FAILURES_TOPIC, Notifier


class PermanentFailure(Exception):
    """A failure that trying again cannot fix; its message is the one line to show.

    Workflow runners fail the step at once (no retry, no traceback): the user
    must change the configuration or the data, or accept the outcome.
    """


class ConfigurationError(PermanentFailure):
    """The input or its configuration is wrong (column map, parameters, the data itself)."""


class ModelRejected(PermanentFailure):
    """The quality gate rejected the trained model; nothing was registered."""


def describe_failure(event: dict[str, Any]) -> dict[str, Any]:
    """Normalise a failure event into execution, step, error and log location."""
    detail = event.get("detail", {})
    detail_type = event.get("detail-type", "")
    if detail_type == "SageMaker Model Building Pipeline Execution Step Status Change":
        return {
            "stage": "sagemaker-pipeline",
            "execution": detail.get("pipelineExecutionArn", ""),
            "step": detail.get("stepName", ""),
            "error": detail.get("failureReason", "no failure reason given"),
            "log": detail.get("logPath") or _cloudwatch_log(detail.get("metadata", {})),
        }
    if detail_type == "Glue Job State Change":
        return {
            "stage": "glue-etl",
            "execution": detail.get("jobRunId", ""),
            "step": detail.get("jobName", ""),
            "error": detail.get("message", "no message given"),
            "log": f"CloudWatch /aws-glue/jobs/error {detail.get('jobRunId', '')}",
        }
    if detail_type == "Step Functions Execution Status Change":
        return {
            "stage": "workflow",
            "execution": detail.get("executionArn", ""),
            "step": detail.get("name", ""),
            "error": detail.get("cause") or detail.get("error") or "no cause given",
            "log": "Step Functions execution history",
        }
    if detail_type in {"Workflow Step Failed", "Stream Batch Failed", "Ingestion Run Failed"}:
        return {
            "stage": event.get("source", "local"),
            "execution": detail.get("execution", ""),
            "step": detail.get("step", ""),
            "error": detail.get("error", ""),
            "log": detail.get("log", ""),
        }
    raise ValueError(
        f"unrecognised failure event detail-type {detail_type!r}; "
        "expected a SageMaker pipeline step, Glue job, Step Functions or fraudops event"
    )


def notify_failure(event: dict[str, Any], notifier: Notifier) -> dict[str, Any]:
    """Publish the failure and return what was sent."""
    failure = describe_failure(event)
    subject = f"[fraudops] {failure['stage']} failed at {failure['step'] or 'unknown step'}"
    notifier.publish(FAILURES_TOPIC, subject, failure)
    return failure


def _cloudwatch_log(metadata: dict[str, Any]) -> str:
    for job_kind in ("ProcessingJob", "TrainingJob", "TransformJob"):
        arn = metadata.get(job_kind, {}).get("Arn")
        if arn:
            name = arn.rsplit("/", 1)[-1]
            return f"CloudWatch /aws/sagemaker/{job_kind}s {name}"
    return "CloudWatch /aws/sagemaker"
