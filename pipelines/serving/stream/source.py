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
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipelines.data.ingest.sources import json_text  # the ingest job's JSON -> text rule

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
    """Reads records on a background thread; the scorer takes them in chunks.

    A per-record ``queue.Queue`` costs two lock round trips per record (about as
    much as parsing it), so the reader appends to a deque (atomic under the GIL)
    and only wakes the consumer when it is waiting. ``capacity`` bounds memory:
    the reader pauses while that many records wait.
    """

    def __init__(self, records: Iterator[RawRecord], capacity: int = 50_000) -> None:
        self._items: deque = deque()
        self._capacity = max(1, capacity)
        self._ready = threading.Event()  # set when the reader has appended something
        self._space = threading.Event()  # set when the consumer has taken something
        self.finished = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(records,), daemon=True)
        self._thread.start()

    def _pump(self, records: Iterator[RawRecord]) -> None:
        items, ready, space, capacity = self._items, self._ready, self._space, self._capacity
        try:
            for record in records:
                items.append(record)
                if not ready.is_set():
                    ready.set()
                if len(items) >= capacity:
                    space.clear()
                    while len(items) >= capacity:
                        space.wait(0.1)  # timeout: a set() racing the clear() is not lost
        except BaseException as exc:  # handed to the consumer, which raises it
            self.error = exc
        finally:
            items.append(_END)
            ready.set()

    def get_many(self, limit: int, timeout: float) -> list[RawRecord]:
        """Up to ``limit`` records; empty if none arrived within ``timeout`` or input ended."""
        if self.finished:
            return []
        items = self._items
        if not items:
            self._ready.clear()
            if not items:  # re-check: the reader sets ``ready`` after any append it sees cleared
                self._ready.wait(timeout)
        taken: list[RawRecord] = []
        while items and len(taken) < limit:
            item = items.popleft()
            if item is _END:
                self.finished = True
                if self.error is not None:
                    raise self.error
                break
            taken.append(item)
        if taken:
            self._space.set()
        return taken

    def get(self, timeout: float) -> RawRecord | None:
        """The next record; None if none arrived within ``timeout`` or the input ended."""
        taken = self.get_many(1, timeout)
        return taken[0] if taken else None
