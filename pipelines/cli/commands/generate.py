"""``fraudops generate``: synthetic transactions as daily landing drops."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.data.datagen import (
    AML_SCENARIOS,
    FRAUD_SCENARIOS,
    GeneratorConfig,
    LandingDrops,
    generate_transactions,
    write_landing_drops,
)
from pipelines.data.datagen.config import MAX_MALFORMED_RATE
from pipelines.data.datagen.writer import FILE_PREFIX, FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate synthetic card transactions (with fraud and AML patterns) as landing drops",
        description="Generate synthetic card transactions with labelled fraud scenarios and "
        "AML patterns, written as one landing file per day (transactions_YYYY-MM-DD.<ext>).",
    )
    add_workdir_argument(parser)
    parser.add_argument("--transactions", type=int, default=500_000, help="rows (default 500000)")
    parser.add_argument("--days", type=int, default=60, help="days covered (default 60)")
    parser.add_argument("--customers", type=int, default=None, help="default: scales with rows")
    parser.add_argument("--terminals", type=int, default=None, help="default: scales with rows")
    parser.add_argument("--seed", type=int, default=42, help="same seed, same files (default 42)")
    parser.add_argument(
        "--start-date", default="2026-01-01", help="first UTC day, YYYY-MM-DD (default 2026-01-01)"
    )
    parser.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        help="share of rows spoiled for ingest to quarantine, e.g. 0.01 (default 0)",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="csv", help="default csv")
    parser.add_argument(
        "--output",
        default=None,
        help="directory for the drops (default: the workspace landing zone)",
    )
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> GeneratorConfig:
    """Validate the options into a config; mistakes become ``UserError``s."""
    try:
        start = dt.date.fromisoformat(args.start_date)
    except ValueError:
        raise UserError(
            f"--start-date {args.start_date!r} is not a date: use YYYY-MM-DD, e.g. 2026-01-01"
        ) from None
    if not 0.0 <= args.malformed_rate <= MAX_MALFORMED_RATE:
        raise UserError(
            f"--malformed-rate {args.malformed_rate} is out of range: "
            f"use a share between 0 and {MAX_MALFORMED_RATE}, e.g. 0.01"
        )
    try:
        return GeneratorConfig(
            transactions=args.transactions,
            days=args.days,
            customers=args.customers,
            terminals=args.terminals,
            seed=args.seed,
            start_date=start,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out_dir = Path(args.output) if args.output else open_workspace(args).landing
    console = Console()
    started = time.perf_counter()
    with console.status(f"generating {config.transactions:,} transactions ..."):
        try:
            table = generate_transactions(config)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    generated = time.perf_counter()
    with Progress(
        TextColumn("writing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{args.format} drops", total=config.days)
        drops = write_landing_drops(
            table,
            out_dir,
            args.format,
            args.malformed_rate,
            config.seed,
            on_file_written=lambda path, rows: progress.update(
                task, advance=1, description=path.name
            ),
        )
    written = time.perf_counter()
    console.print(summary(table, drops))
    # Not in the table: a long path must stay whole to be copy-pasted.
    console.print(f"drops in {out_dir}", soft_wrap=True, highlight=False)
    stale = stale_drops(out_dir, drops)
    if stale:
        console.print(
            f"note: {len(stale)} other drop(s) in that directory were left as they were "
            f"(e.g. {stale[0].name}); delete them if they belong to an older run",
            soft_wrap=True,
            highlight=False,
        )
    console.print(
        f"generated in {generated - started:.1f} s, written in {written - generated:.1f} s"
    )
    return 0


def summary(table: pa.Table, drops: LandingDrops) -> Table:
    """Days, rows, fraud rate per scenario, AML patterns, malformed rows."""
    rows = table.num_rows
    counts = _scenario_counts(table)
    fraud = int(pc.sum(table["is_fraud"]).as_py() or 0)
    report = Table(title="fraudops generate", show_header=False)
    report.add_column("what")
    report.add_column("value", justify="right")
    report.add_row("days (files)", f"{len(drops)}")
    report.add_row("transactions", f"{rows:,}")
    report.add_row("fraud rate", f"{fraud / rows:.3%} ({fraud:,})")
    for scenario in FRAUD_SCENARIOS:
        report.add_row(f"  {scenario}", f"{counts.get(scenario, 0) / rows:.3%}")
    for scenario in AML_SCENARIOS:
        report.add_row(f"{scenario} rows (is_fraud 0)", f"{counts.get(scenario, 0):,}")
    report.add_row("malformed rows", f"{drops.malformed_total:,}")
    for name, count in drops.malformed_counts.items():
        if count:
            report.add_row(f"  {name}", f"{count:,}")
    report.add_row("rows written", f"{drops.rows_written:,}")
    return report


def stale_drops(out_dir: Path, drops: LandingDrops) -> list[Path]:
    """Landing drops in ``out_dir`` that this run did not write (an older run's days)."""
    written = {p.name for p in drops}
    pattern = f"{FILE_PREFIX}*"
    return sorted(p for p in out_dir.glob(pattern) if p.is_file() and p.name not in written)


def _scenario_counts(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table["fraud_scenario"].drop_null())
    return {item["values"].as_py(): item["counts"].as_py() for item in counts}
