"""``fraudops stream``: score a live transaction stream with online features."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import (
    UserError,
    add_time_origin_argument,
    add_workdir_argument,
    iso_instant,
    open_workspace,
)
from pipelines.core.params import DEFAULT_ALLOWED_LATENESS_SECONDS, DEFAULT_MAX_FUTURE_SKEW_SECONDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="score raw transactions as they arrive (CSV or JSON lines; - for stdin)",
        description="Validate and tokenise each raw transaction like ingestion does, compute "
        "its online features, score it with the deployed model (or --endpoint), write "
        "micro-batches to scored/dt=.../stream-*.parquet, dead-letter bad records with the "
        "reason and raise alerts with reason codes. Restart-safe: stopping (Ctrl-C, SIGTERM "
        "or a crash) and starting again on the same input scores every transaction once.",
    )
    parser.add_argument("--input", required=True, help="CSV/JSONL file, or - for stdin")
    parser.add_argument("--format", default="auto", choices=["auto", "csv", "jsonl"])
    parser.add_argument("--model-version", default=None,
                        help="approved model version (default: the deployed one)")
    parser.add_argument("--endpoint", default=None,
                        help="score over HTTP against this endpoint URL (e.g. fraudops serve)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="alert threshold (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=5000,
                        help="most records per micro-batch (default 5000)")
    parser.add_argument("--max-wait", type=float, default=1.0,
                        help="most seconds a record waits for its micro-batch (default 1)")
    parser.add_argument("--commit-interval", type=float, default=30.0,
                        help="seconds between state commits (default 30; 0: every batch)")
    parser.add_argument(
        "--allowed-lateness", type=int, default=DEFAULT_ALLOWED_LATENESS_SECONDS,
        metavar="SECONDS",
        help="how far (seconds) a transaction may be behind the newest one streamed and "
        "still be scored, if no later transaction of its own customer, terminal, ... was "
        f"scored (default {DEFAULT_ALLOWED_LATENESS_SECONDS}); older ones are dead-lettered "
        "out_of_order")
    parser.add_argument(
        "--max-future-skew", type=int, default=None,
        metavar="SECONDS",
        help="how far (seconds) a transaction may be dated ahead of the processing clock "
        f"(default {DEFAULT_MAX_FUTURE_SKEW_SECONDS}, or --allowed-lateness if smaller; at most "
        "--allowed-lateness); later ones "
        "are dead-lettered future_timestamp before they touch the online state, so one wrong "
        "clock cannot make the records after it late")
    parser.add_argument(
        "--now", metavar="ISO8601", default=None, type=iso_instant("--now"),
        help="the processing clock that --max-future-skew measures from (default: the wall "
        "clock, right for live input and for files dated in the past); when replaying a file "
        "dated ahead of today (e.g. generated with a later --start-date), give its present, "
        "e.g. the end of its last day")
    parser.add_argument("--column-map", type=Path, default=None,
                        help='JSON {"their_column": "canonical_column"} as for ingest')
    add_time_origin_argument(parser)
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def _model(ws, args):
    from pipelines.serving.deploy.artifacts import ArtifactError
    from pipelines.serving.deploy.selection import SelectionError
    from pipelines.serving.scoring import ScoringError, load_model
    from pipelines.serving.stream.models import HttpEndpointModel, InProcessModel

    try:
        loaded = load_model(ws, args.model_version, args.threshold)
    except (SelectionError, ScoringError, ArtifactError) as exc:
        raise UserError(str(exc)) from exc
    if args.endpoint:
        return HttpEndpointModel(loaded, url=args.endpoint)
    return InProcessModel(loaded)


def run(args: argparse.Namespace) -> int:
    from pipelines.core.notifications import OutboxNotifier
    from pipelines.core.params import ParameterError, check_max_future_skew_seconds
    from pipelines.data.ingest import IngestError, Tokeniser, load_column_map, load_key
    from pipelines.serving.alerts.cases import CaseQueue
    from pipelines.serving.online.store import StateError
    from pipelines.serving.stream import SourceError, StreamScorer, StreamSettings, read_records
    from pipelines.serving.stream.core import wall_clock
    from pipelines.serving.stream.models import EndpointError

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.max_wait <= 0:
        raise UserError("--max-wait must be a positive number of seconds")
    if args.commit_interval < 0:
        raise UserError("--commit-interval must be 0 or more seconds")
    if args.allowed_lateness < 0:
        raise UserError("--allowed-lateness must be 0 or more seconds")
    try:
        max_future_skew = check_max_future_skew_seconds(
            args.max_future_skew, args.allowed_lateness, "--max-future-skew", "--allowed-lateness")
    except ParameterError as exc:
        raise UserError(str(exc)) from exc
    if args.input != "-" and not Path(args.input).is_file():
        raise UserError(f"--input {args.input} does not exist; pass a CSV/JSONL file or -")
    ws = open_workspace(args)
    model = _model(ws, args)
    try:
        column_map = load_column_map(args.column_map) if args.column_map else {}
        tokeniser = Tokeniser(load_key(ws.secrets))
    except IngestError as exc:
        raise UserError(str(exc)) from exc
    try:  # a --time-unit without any time origin is refused here
        scorer = StreamScorer(
            ws,
            model,
            tokeniser,
            alert_store=CaseQueue(ws.cases_db),
            notifier=OutboxNotifier(ws.outbox),
            settings=StreamSettings(batch_size=args.batch_size, max_wait_seconds=args.max_wait,
                                    commit_interval_seconds=args.commit_interval,
                                    allowed_lateness_seconds=args.allowed_lateness,
                                    max_future_skew_seconds=max_future_skew),
            source="stdin" if args.input == "-" else str(Path(args.input).resolve()),
            column_map=column_map,
            time_origin=args.time_origin,
            time_unit=args.time_unit,
            clock=(lambda: args.now) if args.now else wall_clock,
        )
    except IngestError as exc:
        raise UserError(str(exc)) from exc
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # finish the batch in hand, commit, exit
    console = Console(stderr=True)
    with console.status("streaming...") as status:

        def progress(summary) -> None:
            c = summary.counts
            status.update(f"streaming: {c['records']:,} records, {c['scored']:,} scored, "
                          f"{c['alerts']:,} alerts, {c['dead_letters']:,} dead letters")

        try:
            summary = scorer.run(read_records(args.input, args.format), stop, progress)
        except (SourceError, StateError, EndpointError) as exc:
            raise UserError(f"{exc} (a failure notification was written to {ws.outbox})") from exc
    _register_scored(ws, console)
    _print(summary, console)
    return 0


def _register_scored(ws, console: Console) -> None:
    """Make the stream's output queryable (the ``scored`` view batch scoring also feeds)."""
    from pipelines.data.lake.catalog import register_table

    try:
        register_table(ws, "scored", ws.scored)
    except Exception as exc:  # noqa: BLE001 - the scores are written; the view can be redone
        console.print(f"[yellow]scored rows written, but the catalog view failed: {exc}[/]")


def _print(summary, console: Console) -> None:
    from pipelines.data.ingest.cardtext import card_column_advice
    from pipelines.serving.stream.core import FUTURE_TIMESTAMP

    table = Table(title=f"stream {summary.run_id}" + (" (stopped)" if summary.stopped else ""))
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.counts.items():
        table.add_row(name, f"{value:,}")
    for reason, n in sorted(summary.dead_letter_reasons.items()):
        table.add_row(f"dead letters: {reason}", f"{n:,}")
    if summary.recovered_files:
        table.add_row("uncommitted files removed", str(summary.recovered_files))
    table.add_row("records/s", f"{summary.records_per_second:,.0f}")
    Console().print(table)
    if summary.dead_letter_reasons.get(FUTURE_TIMESTAMP):
        console.print(f"[yellow]{summary.dead_letter_reasons[FUTURE_TIMESTAMP]:,} record(s) "
                      "dated ahead of the processing clock were dead-lettered "
                      f"({FUTURE_TIMESTAMP}); if this input is a replay of records dated "
                      "ahead of today, run it again with --now set to its present[/]")
    for advice in card_column_advice(summary.dead_letter_reasons):
        console.print(f"[yellow]{advice}[/]")
    print(json.dumps({"run_id": summary.run_id, **summary.counts}))  # one line for scripts
