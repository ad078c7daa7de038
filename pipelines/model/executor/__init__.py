"""Docker-free local executor for SageMaker pipeline definitions.

It interprets the definition JSON that ``pipeline.definition()`` renders:
parameters, expressions, conditions and step dependencies, and runs
Processing and Training steps as their containers would (``/opt/ml`` mapped
to a scratch directory, ``s3://`` to the workspace object store). Executions
are recorded under ``workspace.executions``.
"""

from pipelines.model.executor.definition import PipelineDefinition, parse_definition
from pipelines.model.executor.errors import (
    DefinitionError,
    ExecutionNotFoundError,
    ExecutorError,
    ExpressionError,
    ParameterError,
    StepFailure,
    UnsupportedFeatureError,
)
from pipelines.model.executor.runner import (
    ExecutionSummary,
    StepSummary,
    resume,
    resume_pipeline_execution,
    run_pipeline_definition,
)
from pipelines.model.executor.store import ExecutionStore
from pipelines.model.executor.validate import check_supported

__all__ = [
    "DefinitionError",
    "ExecutionNotFoundError",
    "ExecutionStore",
    "ExecutionSummary",
    "ExecutorError",
    "ExpressionError",
    "ParameterError",
    "PipelineDefinition",
    "StepFailure",
    "StepSummary",
    "UnsupportedFeatureError",
    "check_supported",
    "parse_definition",
    "resume",
    "resume_pipeline_execution",
    "run_pipeline_definition",
]
