"""Run the benchmarks and print a table: ``python -m bench [--size N] [--only AREA]``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import bench
from bench._harness import Result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--size", type=int, default=1_000_000, help="transactions (default 1M)")
    parser.add_argument("--only", action="append", help="run only these areas (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    areas = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    if args.only:
        areas = [a for a in areas if a in args.only]
    console = Console()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fraudops-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        for area in sorted(areas):
            console.print(f"[bold]bench {area}[/] at {args.size:,} transactions ...")
            module = importlib.import_module(f"bench.{area}")
            results.extend(module.run(args.size, workdir / area))

    table = Table(title=f"fraudops benchmarks ({args.size:,} transactions, medians)")
    for column in ("area", "figure", "value", "unit", "target", "met"):
        table.add_column(column)
    for r in results:
        met = "" if r.ok is None else ("yes" if r.ok else "NO")
        table.add_row(r.area, r.name, f"{r.value:,.3f}", r.unit, r.target, met)
    console.print(table)


if __name__ == "__main__":
    main()
