"""``fraudops dashboard``: the fraud-operations dashboard as one offline HTML file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="render the fraud-operations dashboard (interactive HTML, works offline)",
        description="Volumes and fraud/alert rates over time, score distribution, model "
        "performance, risky terminals and merchants, the alert queue and ETL quarantine, "
        "from the named Athena queries run on the local lake.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: <workdir>/reports/dashboard.html)")
    parser.add_argument("--evaluation", type=Path, default=None,
                        help="evaluation.json to show (default: the newest approved model's)")
    parser.add_argument("--capacity", type=int, default=100,
                        help="cases the investigators can work per day, k (default 100)")
    parser.add_argument("--min-terminal-transactions", type=int, default=20,
                        help="rank only terminals with at least this many transactions "
                        "(default 20)")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.analytics.dashboard import DashboardOptions, render_dashboard

    ws = open_workspace(args)
    if args.evaluation is not None and not args.evaluation.is_file():
        raise UserError(f"--evaluation {args.evaluation}: no such file")
    if args.capacity < 1 or args.min_terminal_transactions < 1:
        raise UserError("--capacity and --min-terminal-transactions must be at least 1")
    options = DashboardOptions(args.capacity, args.min_terminal_transactions)
    out = (args.out or ws.root / "reports" / "dashboard.html").expanduser().resolve()
    console = Console(stderr=True)
    with console.status("querying the lake and drawing the dashboard"):
        summary = render_dashboard(ws, out, args.evaluation, options)
    for title, reason in summary.missing.items():
        console.print(f"[yellow]no data[/] for {title}: {reason}")
    console.print(f"dashboard: {summary.path} ({summary.charts} charts, "
                  f"{summary.seconds:.1f} s); open it in a browser")
    return 0
