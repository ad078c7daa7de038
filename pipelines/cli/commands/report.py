"""``fraudops report NAME --from DAY --to DAY``: regulatory reports into the records area.

Reports: ``sar-candidates``, ``ctr``, ``model-card`` (``--model-version``,
default the deployed one; drift measured on the period), ``fraud-stats``.
Each is written as JSON, CSV, HTML and PDF under
``records/reports/<name>/<run id>/`` (all files or none) and audited. With
``--backend aws --env ENV`` the lake is read through Athena and the files go
to ``s3://<records bucket>/reports/<name>/<run id>/`` under Object Lock, followed
by a checkpoint of the audit trail (``audit/checkpoints/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import (
    UserError,
    add_aws_arguments,
    add_workdir_argument,
    athena_target,
    aws_errors,
    aws_session,
    open_workspace,
    records_bucket,
)

CTR_REPORTS = ("ctr", "sar-candidates")


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.analytics.reports import REPORT_NAMES

    parser = subparsers.add_parser(
        "report",
        help="generate a regulatory report (SAR candidates, CTR, model card, fraud statistics)",
        description="Write a report as JSON, CSV, HTML and PDF into the retention-protected "
        "records area (records/reports/<name>/<run id>/) and record it in the audit trail.",
    )
    parser.add_argument("name", choices=REPORT_NAMES, help="which report")
    parser.add_argument("--from", dest="start", type=_day, required=True,
                        help="first day of the period (YYYY-MM-DD, UTC)")
    parser.add_argument("--to", dest="end", type=_day, required=True,
                        help="last day of the period, inclusive")
    card = parser.add_argument_group("model-card")
    card.add_argument("--model-version", default=None,
                      help="version or model package ARN (default: the deployed model)")
    card.add_argument("--group", default=None, help="model package group, if several")
    cash = parser.add_argument_group("ctr and sar-candidates (CTR and structuring rules)")
    cash.add_argument("--timezone", default="UTC", help="business day time zone (default UTC)")
    cash.add_argument("--cutoff-hour", type=int, default=0,
                      help="local hour from which transactions book on the next business day "
                      "(default 0 = midnight)")
    cash.add_argument("--no-weekend-roll", action="store_true",
                      help="book Saturday and Sunday on their own day, not on Monday")
    cash.add_argument("--structuring-band", nargs=2, type=float, metavar=("LOW", "HIGH"),
                      default=None, help="USD band just under the threshold (default 8000 10000)")
    cash.add_argument("--structuring-min-count", type=int, default=None,
                      help="transactions in the band needed (default 2)")
    cash.add_argument("--structuring-window-days", type=float, default=None,
                      help="days the transactions may span (default 3)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--backend", choices=("local", "aws"), default="local",
                        help="aws: read the lake through Athena (the same report queries) and "
                        "write to the environment's Object-Lock records bucket, then checkpoint "
                        "the audit trail there (sar-candidates, ctr, fraud-stats)")
    add_aws_arguments(parser)
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Builder keyword arguments; options that do not apply to the report are refused."""
    from pipelines.analytics.reports.ctr import CtrRules, StructuringRule

    if args.name != "model-card" and (args.model_version or args.group):
        raise UserError("--model-version and --group apply to the model-card report only")
    if args.name == "model-card":
        return {"model_version": args.model_version, "group": args.group}
    if args.name not in CTR_REPORTS:
        return {}
    if not 0 <= args.cutoff_hour <= 23:  # noqa: PLR2004
        raise UserError(f"--cutoff-hour must be 0-23, got {args.cutoff_hour}")
    structuring: dict[str, Any] = {}
    if args.structuring_band:
        structuring["band_low_usd"], structuring["band_high_usd"] = args.structuring_band
    if args.structuring_min_count is not None:
        structuring["min_transactions"] = args.structuring_min_count
    if args.structuring_window_days is not None:
        structuring["window_days"] = args.structuring_window_days
    try:
        _check_timezone(args.timezone)
        return {"rules": CtrRules(timezone=args.timezone, cutoff_hour=args.cutoff_hour,
                                  weekends_roll_forward=not args.no_weekend_roll),
                "structuring": StructuringRule(**structuring)}
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown --timezone {name!r}: use an IANA name such as "
                         "America/New_York") from exc


def run(args: argparse.Namespace) -> int:
    from pipelines.analytics.reports import ReportError, generate
    from pipelines.compliance.audit import AuditError
    from pipelines.compliance.carddata import CardDataError

    options = _options(args)
    console = Console(stderr=args.json)
    checkpoint = None
    try:
        with console.status(f"building the {args.name} report for {args.start}..{args.end}"):
            if args.backend == "aws":
                written, checkpoint = _publish(args, options)
            else:
                written = generate(open_workspace(args), args.name, args.start, args.end,
                                   **options)
    except (ReportError, CardDataError, AuditError, *aws_errors()) as exc:
        raise UserError(str(exc)) from exc
    where = written.location or str(written.directory)
    if args.json:
        print(json.dumps({"report": written.name, "run_id": written.run_id,
                          "directory": where, "files": written.files,
                          "summary": written.summary,
                          "audit_checkpoint": checkpoint}, indent=2, default=str))
        return 0
    table = Table(title=f"{args.name} {args.start}..{args.end}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in written.summary.items():
        table.add_row(key.replace("_", " "), str(value))
    table.add_row("written to", where)
    if checkpoint:
        table.add_row("audit checkpoint", checkpoint)
    else:
        table.add_row("open", str(written.html))
        table.add_row("pdf", str(written.pdf))
    console.print(table)
    return 0


def _publish(args: argparse.Namespace, options: dict[str, Any]) -> tuple[Any, str]:
    """Athena in, records bucket out; then the trail's head (with this report's entry)."""
    from pipelines.analytics.reports import publish
    from pipelines.analytics.reports.data import AthenaLake
    from pipelines.compliance.records_bucket import checkpoint_trail
    from pipelines.data.lake.athena_client import AthenaRunner

    session = aws_session(args)
    ws = open_workspace(args)
    records = records_bucket(args, session)
    lake = AthenaLake(AthenaRunner(session.client("athena"), athena_target(args, session)))
    written = publish(ws, args.name, args.start, args.end, lake, records, **options)
    return written, records.uri(checkpoint_trail(ws, records).key)
