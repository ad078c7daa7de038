"""``fraudops ingest``: landing files -> curated + quarantine zones, with a reconciliation."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.cli.commands._common import (
    UserError,
    add_time_origin_argument,
    add_workdir_argument,
    open_workspace,
)
from pipelines.data.ingest import IngestError, ingest, load_column_map, render
from pipelines.data.ingest.sources import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="validate, tokenise, de-duplicate and partition landing files (the Glue ETL job)",
        description="Ingest CSV, JSON Lines or Parquet drops (files or directories; default: "
        "the workspace landing zone) into day-partitioned curated Parquet. Bad rows are "
        "quarantined with a reason, duplicates are counted and skipped, card numbers are "
        "tokenised. Prints and records a reconciliation.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    parser.add_argument(
        "--column-map", type=Path, metavar="FILE.json",
        help='JSON object mapping your column names to canonical ones, e.g. '
        '{"txn_id": "transaction_id", "ts": "timestamp"}',
    )
    add_time_origin_argument(parser)
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="input format (default: from each file's extension)")
    parser.add_argument("--token-key-file", type=Path, default=None,
                        help="file holding the card-token key (default: $FRAUDOPS_TOKEN_KEY, "
                        "else a key generated once under <workdir>/secrets)")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    console = Console()
    try:
        column_map = load_column_map(args.column_map) if args.column_map else None
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/"
            "{task.total}"), TimeElapsedColumn(), console=console, transient=True,
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            report = ingest(ws, args.paths or None, column_map, args.format,
                            key_file=args.token_key_file, progress=progress,
                            time_origin=args.time_origin, time_unit=args.time_unit)
    except IngestError as exc:
        raise UserError(str(exc)) from exc
    render(report, console)
    console.print(f"log: {ws.logs / 'ingest' / (report.ingestion_id + '.json')}")
    return 0 if report.balanced else 1
