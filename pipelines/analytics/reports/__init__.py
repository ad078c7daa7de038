"""Regulatory reports written into the retention-protected records area.

``generate(ws, name, start, end, **options)`` builds one report and writes it
as JSON, CSV, HTML and PDF under ``records/reports/<name>/<run id>/``, audited
as ``report.generate``. Reports: ``sar-candidates``, ``ctr``, ``model-card``,
``fraud-stats``. ``publish(...)`` builds one from Athena (the same report
queries) and writes it to the Object-Lock records bucket on AWS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from pipelines.analytics.reports.document import Report, ReportError
from pipelines.core.workspace import Workspace

if TYPE_CHECKING:  # the writers pull in reportlab; the CLI parser need not load it
    from pipelines.analytics.reports.data import LakeReader
    from pipelines.analytics.reports.output import WrittenReport
    from pipelines.compliance.records_bucket import RecordsBucket

# name -> (module, builder); imported on use so one report's dependencies never
# slow down or break another.
_BUILDERS: dict[str, tuple[str, str]] = {
    "sar-candidates": ("pipelines.analytics.reports.sar", "build_sar_report"),
    "ctr": ("pipelines.analytics.reports.ctr", "build_ctr_report"),
    "model-card": ("pipelines.analytics.reports.model_card", "build_model_card"),
    "fraud-stats": ("pipelines.analytics.reports.fraud_stats", "build_fraud_stats_report"),
}


def _builder(name: str) -> Callable[..., Report]:
    module, function = _BUILDERS[name]
    return getattr(importlib.import_module(module), function)


REPORT_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# Reports built from the lake alone, so they run on Athena as well. The model card
# reads the local registry, evaluation and feature files (not the AWS registry).
LAKE_REPORTS: tuple[str, ...] = ("sar-candidates", "ctr", "fraud-stats")


def build(ws: Workspace, name: str, start: date, end: date, **options: Any) -> Report:
    """Assemble report ``name`` for [start, end] without writing it."""
    if name not in REPORT_NAMES:
        raise ReportError(f"unknown report {name!r}: choose one of {', '.join(REPORT_NAMES)}")
    if end < start:
        raise ReportError(f"--to {end} is before --from {start}")
    return _builder(name)(ws, start, end, **options)


def generate(ws: Workspace, name: str, start: date, end: date, actor: str | None = None,
             **options: Any) -> WrittenReport:
    """Build report ``name`` and write it (all formats or nothing), audited."""
    from pipelines.analytics.reports.output import write_report

    return write_report(ws, build(ws, name, start, end, **options), actor=actor)


def publish(ws: Workspace, name: str, start: date, end: date, lake: LakeReader,
            records: RecordsBucket, actor: str | None = None, **options: Any) -> WrittenReport:
    """Build report ``name`` from ``lake`` (Athena) and write it to the records bucket, audited."""
    from pipelines.analytics.reports.output import publish_report

    if name not in LAKE_REPORTS:
        raise ReportError(f"the {name} report reads the local model registry and files, so it "
                          f"runs on the local backend only; on AWS choose one of "
                          f"{', '.join(LAKE_REPORTS)}")
    return publish_report(ws, build(ws, name, start, end, lake=lake, **options), records,
                          actor=actor)


__all__ = ["LAKE_REPORTS", "REPORT_NAMES", "Report", "ReportError", "build", "generate",
           "publish"]
