"""``fraudops feedback PATH``: labels that arrive later (chargebacks, dispositions)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.csv as pv
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.data.labels import write_labels


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feedback",
        help="load confirmed fraud / legitimate labels with the time they became known",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="CSV, JSON Lines or Parquet with transaction_id, is_fraud, "
                             "label_known_at (ISO-8601 UTC) and optionally label_source")
    add_workdir_argument(parser)
    parser.set_defaults(handler=_feedback)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pv.read_csv(path, convert_options=pv.ConvertOptions(
            column_types={"transaction_id": "string", "label_known_at": "string"}))
    elif suffix in (".jsonl", ".json"):
        table = pj.read_json(path)
    elif suffix == ".parquet":
        table = pq.read_table(path)
    else:
        raise UserError(f"{path}: unsupported format {suffix!r}; use .csv, .jsonl or .parquet")
    return table.to_pylist()


def _feedback(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    total = 0
    for path in args.paths:
        rows = _read(path)
        for row in rows:
            row.setdefault("label_source", f"feedback:{path.name}")
        try:
            write_labels(ws, rows)
        except ValueError as exc:
            raise UserError(f"{path}: {exc}") from None
        total += len(rows)
        print(f"{path}: {len(rows)} labels")
    print(f"{total} labels stored under {ws.labels}")
    return 0
