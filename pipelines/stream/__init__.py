"""Real-time scoring of a transaction stream with online features.

``process_batch`` (``core``) validates, tokenises, featurises and scores one
micro-batch; ``StreamScorer`` (``scorer``) runs it locally with exactly-once
outputs (``fraudops stream``); ``lambdas/stream_scoring`` runs it on Kinesis.
"""

from pipelines.stream.core import BatchOutcome, process_batch
from pipelines.stream.models import HttpEndpointModel, InProcessModel, SageMakerEndpointModel
from pipelines.stream.scorer import StreamScorer, StreamSettings, StreamSummary, dead_letter_dir
from pipelines.stream.source import RawRecord, SourceError, read_records

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
