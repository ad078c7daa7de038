"""Status-change events of local executions, shaped like the ones SageMaker emits.

On AWS, SageMaker Pipelines puts "SageMaker Model Building Pipeline Execution
(Step) Status Change" events on EventBridge, where rules route failed steps to
the failure-notification Lambda. The executor publishes the same events on
the workspace's in-process bus (``pipelines.core.events.local_bus``), so a rule
written for AWS matches locally too, and every event lands in the bus log.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.events import SAGEMAKER_SOURCE, EventBus, local_bus
from pipelines.core.workspace import Workspace
from pipelines.model.executor.store import execution_arn, pipeline_arn

STEP_STATUS_CHANGE = "SageMaker Model Building Pipeline Execution Step Status Change"
EXECUTION_STATUS_CHANGE = "SageMaker Model Building Pipeline Execution Status Change"


class StatusPublisher:
    """Publishes one execution's status changes on the workspace bus."""

    def __init__(self, workspace: Workspace, pipeline_name: str, execution_id: str) -> None:
        self._workspace = workspace
        self._bus: EventBus | None = None
        self.pipeline_arn = pipeline_arn(pipeline_name)
        self.execution_arn = execution_arn(pipeline_name, execution_id)

    @property
    def bus(self) -> EventBus:
        """The workspace bus, created on first use."""
        if self._bus is None:
            self._bus = local_bus(self._workspace)
        return self._bus

    def step(
        self,
        name: str,
        step_type: str,
        previous: str,
        current: str,
        *,
        failure_reason: str | None = None,
        metadata: dict[str, Any] | None = None,
        log_path: str | None = None,
    ) -> None:
        """A step moved from ``previous`` to ``current`` status."""
        detail: dict[str, Any] = {
            "pipelineArn": self.pipeline_arn,
            "pipelineExecutionArn": self.execution_arn,
            "stepName": name,
            "stepType": step_type,
            "previousStepStatus": previous,
            "currentStepStatus": current,
            "metadata": metadata or {},
        }
        if failure_reason:
            detail["failureReason"] = failure_reason
        if log_path:
            detail["logPath"] = log_path  # local addition: where the step's output went
        self.bus.publish(SAGEMAKER_SOURCE, STEP_STATUS_CHANGE, detail, [self.execution_arn])

    def execution(self, previous: str | None, current: str, start_time: str) -> None:
        """The execution moved from ``previous`` to ``current`` status."""
        detail = {
            "pipelineArn": self.pipeline_arn,
            "pipelineExecutionArn": self.execution_arn,
            "previousPipelineExecutionStatus": previous,
            "currentPipelineExecutionStatus": current,
            "executionStartTime": start_time,
        }
        self.bus.publish(SAGEMAKER_SOURCE, EXECUTION_STATUS_CHANGE, detail, [self.pipeline_arn])
