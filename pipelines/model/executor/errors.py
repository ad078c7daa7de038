"""Errors raised by the local pipeline executor.

Every message names the step, field or expression at fault and what to do,
because the person reading it is usually looking at a pipeline definition
they did not write by hand.
"""

from __future__ import annotations


class ExecutorError(Exception):
    """Base class: a problem that stops the executor before or during a run."""


class DefinitionError(ExecutorError):
    """The pipeline definition JSON is malformed or inconsistent."""


class UnsupportedFeatureError(ExecutorError):
    """The definition uses a step type, expression or job shape the executor cannot run.

    Raised instead of silently skipping, so a local run never pretends to have
    executed something it did not.
    """


class ExpressionError(ExecutorError):
    """An expression could not be resolved against the current execution state."""


class ParameterError(ExecutorError):
    """A parameter given for a run is unknown, missing or of the wrong type."""


class ExecutionNotFoundError(ExecutorError):
    """No execution with the given id exists in the workspace."""


# Failure classes a step failure can carry. The SageMaker ones are the
# exception types RetryPolicies can name; the others are never retried,
# exactly as on SageMaker (a script that exits non-zero is an AlgorithmError).
SERVICE_FAULT = "Step.SERVICE_FAULT"
THROTTLING = "Step.THROTTLING"
JOB_INTERNAL_ERROR = "SageMaker.JOB_INTERNAL_ERROR"
CAPACITY_ERROR = "SageMaker.CAPACITY_ERROR"
RESOURCE_LIMIT = "SageMaker.RESOURCE_LIMIT"
ALGORITHM_ERROR = "AlgorithmError"
CLIENT_ERROR = "ClientError"
FAIL_STEP = "FailStep"

RETRYABLE_EXCEPTION_TYPES = frozenset(
    {SERVICE_FAULT, THROTTLING, JOB_INTERNAL_ERROR, CAPACITY_ERROR, RESOURCE_LIMIT}
)


class StepFailure(Exception):
    """A step ran and failed; ``exception_type`` decides whether a RetryPolicy applies."""

    def __init__(self, reason: str, exception_type: str = ALGORITHM_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exception_type = exception_type
