"""``fraudops score``: batch-score a day of the feature table (or a Parquet file), raise alerts.

The same call as the ``score`` step of ``fraudops run``
(:func:`pipelines.serving.score_and_alert.score_and_alert`), so both raise the
same alerts for the same day.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="batch-score transactions with the deployed model into the scored table",
        description="Score one day of the feature table (--date) or a Parquet file (--input) "
        "with the deployed model version (or --version), write scored/dt=YYYY-MM-DD and raise "
        "alerts (cases and notifications) for scores at or above the threshold, as "
        "`fraudops run` does. Rerunning replaces the day's scores; it never duplicates them "
        "or their alerts.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--date", help="day of the feature table to score, YYYY-MM-DD")
    source.add_argument("--input", type=Path, help="Parquet file or directory with features")
    parser.add_argument(
        "--version", default=None, help="approved model version (default: deployed)"
    )
    parser.add_argument("--group", default=None, help="model package group")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="alert threshold (default: the model's evaluation alert_threshold)",
    )
    parser.add_argument("--webhook-url", default=None, help="also POST new alerts here")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy.artifacts import ArtifactError
    from pipelines.serving.deploy.selection import SelectionError
    from pipelines.serving.score_and_alert import score_and_alert
    from pipelines.serving.scoring import ScoringError, load_model

    ws = open_workspace(args)
    if args.input is not None and not args.input.exists():
        raise UserError(f"--input {args.input} does not exist")
    progress = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    try:
        model = load_model(ws, args.version, args.threshold, args.group)
        with progress:
            task = progress.add_task("score", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = score_and_alert(ws, day=args.date, path=args.input, model=model,
                                     webhook_url=args.webhook_url, progress=advance)
    except (SelectionError, ArtifactError, ScoringError) as exc:
        raise UserError(str(exc)) from exc
    summary = result.scoring
    table = Table(title="batch scoring", show_header=False)
    for label, value in (
        ("model version", str(summary.model_version)),
        ("rows scored", f"{summary.rows:,}"),
        ("alert decisions", f"{summary.alerts:,} (score >= {summary.threshold:g})"),
        ("alerts raised", f"{result.alerts:,} new (+{result.grouped} grouped, "
                          f"{result.already_raised} raised before); `fraudops alerts list`"),
        ("partitions", ", ".join(f"dt={d} ({n:,} rows)" for d, n in summary.partitions.items())),
        ("throughput", f"{summary.rows_per_second:,.0f} tx/s"),
        ("output", str(ws.scored)),
        ("notifications", str(result.outbox)),
        ("catalog", summary.catalog),
    ):
        table.add_row(label, value)
    Console().print(table)
    return 0
