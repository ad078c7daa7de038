"""Batch scoring of the feature table with the deployed model (batch-transform semantics)."""

from pipelines.serving.scoring.batch import (
    SCORED_SCHEMA,
    ScoringError,
    ScoringSummary,
    load_model,
    score_day,
    score_file,
)

__all__ = [
    "SCORED_SCHEMA",
    "ScoringError",
    "ScoringSummary",
    "load_model",
    "score_day",
    "score_file",
]
