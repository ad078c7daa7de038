"""Real-time scoring of a transaction stream with online features.

``process_batch`` (``core``) validates, tokenises, featurises and scores one
micro-batch; ``StreamScorer`` (``scorer``) runs it locally with exactly-once
outputs (``fraudops stream``); ``lambdas/stream_scoring`` runs it on Kinesis.
"""

from pipelines.serving.stream.core import BatchOutcome, process_batch
from pipelines.serving.stream.models import (
    HttpEndpointModel,
    InProcessModel,
    SageMakerEndpointModel,
)
from pipelines.serving.stream.scorer import (
    StreamScorer,
    StreamSettings,
    StreamSummary,
    dead_letter_dir,
)
from pipelines.serving.stream.source import RawRecord, SourceError, read_records

__all__ = [
    "BatchOutcome",
    "HttpEndpointModel",
    "InProcessModel",
    "RawRecord",
    "SageMakerEndpointModel",
    "SourceError",
    "StreamScorer",
    "StreamSettings",
    "StreamSummary",
    "dead_letter_dir",
    "process_batch",
    "read_records",
]
