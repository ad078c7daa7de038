"""Raw transactions from a file or stdin, one record at a time, as text.

CSV (header line first) or JSON Lines; ``-`` reads stdin. Every record keeps
the line it started on, so a dead letter says where it came from. A record
that is not an object (JSON) or has the wrong number of fields (CSV) is
yielded as malformed (``values is None``), never skipped.

Reading runs on a thread feeding a bounded queue, so the scorer can flush a
partial micro-batch when the input goes quiet (a live stream on stdin).
"""

from __future__ import annotations

import csv
import io
import json
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipelines.ingest.sources import json_text  # the ingest job's JSON -> text rule

FORMATS = ("auto", "csv", "jsonl")


class SourceError(Exception):
    """The input cannot be read; the message names it and the fix."""


@dataclass(frozen=True)
class RawRecord:
    """One input record as text (``None`` values: malformed), with its line number."""

    line: int
    values: dict[str, str | None] | None


def detect_format(path: str, first_line: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"


def _csv_records(handle: TextIO, first_line: str) -> Iterator[RawRecord]:
    reader = csv.reader(_chain(first_line, handle))
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or not any(cell.strip() for cell in row):
            continue  # blank line: not a record
        if len(row) != len(header):
            yield RawRecord(line, None)
            continue
        values = {h: (v if v != "" else None) for h, v in zip(header, row, strict=True)}
        yield RawRecord(line, values)


def _jsonl_records(handle: TextIO, first_line: str) -> Iterator[RawRecord]:
    for number, text in enumerate(_chain(first_line, handle), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            yield RawRecord(number, None)
            continue
        if not isinstance(record, dict):
            yield RawRecord(number, None)
            continue
        yield RawRecord(number, {str(k): json_text(v) for k, v in record.items()})


def _chain(first: str, handle: TextIO) -> Iterator[str]:
    if first:
        yield first
    yield from handle


def read_records(path: str, fmt: str = "auto") -> Iterator[RawRecord]:
    """Records of ``path`` (``-``: stdin) in input order."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    if path == "-":
        handle: TextIO = sys.stdin
    else:
        file = Path(path)
        if not file.is_file():
            raise SourceError(f"{path} does not exist (or is not a file); pass a CSV/JSONL file")
        if file.suffix == ".gz":
            import gzip

            handle = io.TextIOWrapper(
                gzip.open(file), encoding="utf-8-sig", newline=""  # noqa: SIM115 - closed below
            )
        else:
            handle = file.open(encoding="utf-8-sig", newline="")
    try:
        first = handle.readline()
        kind = detect_format(path, first, fmt)
        yield from (_csv_records if kind == "csv" else _jsonl_records)(handle, first)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8 text ({exc}); convert it and retry") from exc
    finally:
        if handle is not sys.stdin:
            handle.close()


_END = object()


class RecordQueue:
    """Reads records on a background thread; ``get(timeout)`` returns None when quiet."""

    def __init__(self, records: Iterator[RawRecord], capacity: int = 50_000) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.finished = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(records,), daemon=True)
        self._thread.start()

    def _pump(self, records: Iterator[RawRecord]) -> None:
        try:
            for record in records:
                self._queue.put(record)
        except BaseException as exc:  # handed to the consumer, which raises it
            self.error = exc
        finally:
            self._queue.put(_END)

    def get(self, timeout: float) -> RawRecord | None:
        """The next record; None if none arrived within ``timeout`` or the input ended."""
        if self.finished:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self.finished = True
            if self.error is not None:
                raise self.error
            return None
        return item
