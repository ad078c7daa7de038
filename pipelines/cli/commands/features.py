"""``fraudops features``: build the point-in-time feature table from the curated zone."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.core.params import DEFAULT_LABEL_DELAY_DAYS, ParameterError, check_label_delay_days


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="compute point-in-time features for every curated transaction",
        description="Read the curated transactions, compute the feature set (DuckDB on "
        "this machine or Spark local[2]) and publish the feature table atomically.",
    )
    parser.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="duckdb (single node, default) or spark (the code the EMR step runs)",
    )
    parser.add_argument(
        "--label-delay-days",
        type=int,
        default=DEFAULT_LABEL_DELAY_DAYS,
        help="days before a fraud label is known; terminal risk uses only known labels "
        f"(default {DEFAULT_LABEL_DELAY_DAYS})",
    )
    parser.add_argument(
        "--print-sql",
        action="store_true",
        help="print the DuckDB SQL compiled from the feature definitions and exit",
    )
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `fraudops --help` stays fast.
    from pipelines.data.features.build import build_feature_table

    try:
        check_label_delay_days(args.label_delay_days, "--label-delay-days")
    except ParameterError as exc:
        raise UserError(str(exc)) from exc
    if args.print_sql:
        from pipelines.data.features.duckdb_engine import compile_sql

        print(compile_sql(args.label_delay_days))
        return 0
    ws = open_workspace(args)
    console = Console(stderr=True)
    with console.status("building features ...") as status:
        try:
            summary = build_feature_table(
                ws,
                label_delay_days=args.label_delay_days,
                engine=args.engine,
                progress=lambda message: status.update(f"{message} ..."),
            )
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from exc
    table = Table(title="feature table", show_header=False)
    fraud_rate = "n/a" if summary.fraud_rate is None else f"{summary.fraud_rate:.4%}"
    for label, value in (
        ("engine", summary.engine),
        ("rows", f"{summary.rows:,}"),
        ("features", str(summary.features)),
        ("groups used", ", ".join(f"{g} ({n})" for g, n in summary.feature_groups.items())),
        *([("left out", ", ".join(f"{g} ({why})" for g, why in summary.left_out_groups.items()))]
          if summary.left_out_groups else []),
        ("day partitions", str(summary.partitions)),
        ("fraud rate", fraud_rate),
        ("label delay", f"{summary.label_delay_days} days"),
        ("time", f"{summary.seconds:.1f} s"),
        ("feature set version", summary.version),
        ("output", summary.output),
        ("catalog", summary.catalog),
    ):
        table.add_row(label, value)
    Console().print(table)
    return 0
