"""Score transactions with the deployed model and raise alerts from the scores, in one call.

``fraudops score`` and the ``score`` step of ``fraudops run`` both call
:func:`score_and_alert`, so a day scored either way raises the same alerts:
the rows at or above the model's threshold go through
:func:`pipelines.serving.alerts.raise_alerts` (deduplicated per card, one case
each) and new alerts are published to the outbox (and the webhook, if given).
Raising is idempotent, so rescoring a day never duplicates an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.core.notifications import OutboxNotifier
from pipelines.core.schema import PARTITION_COLUMN
from pipelines.core.workspace import Workspace
from pipelines.serving.alerts import AlertPolicy, CaseQueue, raise_alerts
from pipelines.serving.scoring.batch import (
    LoadedModel,
    Progress,
    ScoringError,
    ScoringSummary,
    load_model,
    score_day,
    score_file,
)


@dataclass(frozen=True)
class ScoredAndAlerted:
    """What one score-and-alert call did: the scoring, then the alerts it raised."""

    scoring: ScoringSummary
    alerts: int  # new alerts, each with its own case and notification
    grouped: int  # alerts grouped under an open alert of the same card
    already_raised: int  # transactions alerted on by an earlier run (a rescore)
    outbox: Path

    @property
    def days(self) -> list[str]:
        """The scored days (``dt`` partitions), in order."""
        return sorted(self.scoring.partitions)


def latest_feature_day(workspace: Workspace) -> str:
    """The newest ``dt`` of the feature table: the day ``fraudops run`` scores."""
    prefix = f"{PARTITION_COLUMN}="
    days = sorted(p.name.removeprefix(prefix) for p in workspace.features.glob(f"{prefix}*"))
    if not days:
        raise ScoringError(
            f"the feature table {workspace.features} has no days: run 'fraudops features'"
        )
    return days[-1]


def score_and_alert(
    workspace: Workspace,
    *,
    day: str | None = None,
    path: Path | None = None,
    model: LoadedModel | None = None,
    webhook_url: str | None = None,
    progress: Progress | None = None,
) -> ScoredAndAlerted:
    """Score the feature table's ``day`` (or the Parquet ``path``), then raise alerts.

    ``model`` defaults to the deployed version with its own alert threshold;
    alerts use the same threshold as the scored ``decision`` column.
    """
    if (day is None) == (path is None):
        raise ValueError("score_and_alert needs exactly one of day= or path=")
    model = model or load_model(workspace)
    if day is not None:
        summary = score_day(workspace, day, model, progress)
    else:
        assert path is not None  # checked above; narrows the type
        summary = score_file(workspace, path, model, progress)
    # Only rows at or above the threshold can alert; converting just those to
    # Python rows keeps large days cheap.
    counts = raise_alerts(
        summary.alert_rows.to_pylist(),
        AlertPolicy(threshold=summary.threshold),
        CaseQueue(workspace.cases_db),
        OutboxNotifier(workspace.outbox, webhook_url),
    )
    return ScoredAndAlerted(
        scoring=summary,
        alerts=counts["alerts"],
        grouped=counts["grouped"],
        already_raised=counts["already_raised"],
        outbox=workspace.outbox,
    )
