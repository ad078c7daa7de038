"""Landing drops: one file per UTC day, written atomically (temp file, then rename).

A reader never sees a half-written drop: the file appears under its final
name only once complete, and a failure leaves no temp file behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.core.fileio import atomic_path
from pipelines.data.datagen.malformed import MALFORMED_CLASSES, inject_malformed, landing_text
from pipelines.data.datagen.timefmt import utc_day

FORMATS: dict[str, str] = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
FILE_PREFIX = "transactions_"
_DAY = "__day"


class LandingDrops(list[Path]):
    """The written files, day by day (a list of paths) plus what they hold."""

    def __init__(self, paths: list[Path], rows_written: int, malformed_counts: dict[str, int]):
        super().__init__(paths)
        self.rows_written = rows_written
        self.malformed_counts = malformed_counts

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed_counts.values())


def drop_name(day: str, fmt: str) -> str:
    """``transactions_YYYY-MM-DD.<ext>``: the name ingest looks for."""
    return f"{FILE_PREFIX}{day}.{FORMATS[fmt]}"


def write_landing_drops(
    table: pa.Table,
    out_dir: Path,
    fmt: str = "csv",
    malformed_rate: float = 0.0,
    seed: int = 42,
    on_file_written: Callable[[Path, int], None] | None = None,
) -> LandingDrops:
    """Write ``table`` (from ``generate_transactions``) as one drop per day.

    ``malformed_rate`` spoils that share of rows (see ``malformed.py``) in a
    way fixed by ``seed``; the counts per class come back on the result.
    ``on_file_written(path, rows)`` is called after each file (progress).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if table.num_rows == 0:
        return LandingDrops([], 0, dict.fromkeys(MALFORMED_CLASSES, 0))
    table = _sorted_by_time(table)
    # The day travels with each row as a helper column through the spoiling
    # (duplicates copy it; a spoiled timestamp keeps its original day).
    with_day = landing_text(table).append_column(_DAY, _days(table))
    spoiled = inject_malformed(with_day, malformed_rate, seed)
    day_of_row = spoiled.table[_DAY].to_numpy(zero_copy_only=False)
    text = spoiled.table.drop_columns([_DAY])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rows are sorted by time, so each day is one contiguous run of rows.
    changes = np.flatnonzero(day_of_row[1:] != day_of_row[:-1]) + 1
    bounds = np.concatenate([[0], changes, [text.num_rows]])
    paths: list[Path] = []
    with _DropWriter(fmt) as writer:
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            path = out_dir / drop_name(str(day_of_row[start]), fmt)
            writer.write(text.slice(start, stop - start), path)
            paths.append(path)
            if on_file_written is not None:
                on_file_written(path, int(stop - start))
    counts = {name: spoiled.counts.get(name, 0) for name in MALFORMED_CLASSES}
    return LandingDrops(paths, text.num_rows, counts)


def _days(table: pa.Table) -> pa.ChunkedArray:
    """The UTC day (YYYY-MM-DD) of every row, from the typed timestamps."""
    ts = table["timestamp"]
    if not pa.types.is_timestamp(ts.type):
        raise ValueError("write_landing_drops needs typed timestamps (from generate_transactions)")
    return utc_day(ts)


def _sorted_by_time(table: pa.Table) -> pa.Table:
    """Files must be sorted by time (and each day contiguous); sort only if needed."""
    seconds = table["timestamp"].cast(pa.timestamp("s", tz="UTC")).to_numpy()
    if np.all(seconds[1:] >= seconds[:-1]):
        return table
    return table.take(np.argsort(seconds, kind="stable"))


class _DropWriter:
    """Writes one drop per call, atomically; one DuckDB connection serves every JSONL file."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> _DropWriter:
        if self.fmt == "jsonl":
            # Opening a connection costs more than writing a small day file.
            self._con = duckdb.connect()
            self._con.execute("SET preserve_insertion_order = true")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._con is not None:
            self._con.close()

    def write(self, table: pa.Table, path: Path) -> None:
        with atomic_path(path) as tmp:
            if self.fmt == "csv":
                pacsv.write_csv(table, tmp)
            elif self.fmt == "jsonl":
                self._write_jsonl(table, tmp)
            else:
                pq.write_table(table, tmp, compression="snappy")

    def _write_jsonl(self, table: pa.Table, path: Path) -> None:
        """One JSON object per line, in row order (DuckDB: ~3x faster than pandas)."""
        assert self._con is not None
        self._con.register("drop_rows", table)
        try:
            target = str(path).replace("'", "''")
            self._con.execute(f"COPY (SELECT * FROM drop_rows) TO '{target}' (FORMAT json)")
        finally:
            self._con.unregister("drop_rows")
