"""Finding landing files and reading them into one all-text canonical table.

Every value is read as text first, so a rejected row can be quarantined with
exactly what the file said, and parsing rules live in one place
(``validation``). Each row keeps the line it came from: for CSV the header is
line 1; for JSON Lines the physical line; for Parquet the 1-based row number.
Files are read through a ``pyarrow.fs.FileSystem`` so the Glue job reads S3 with
the same code.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.core import schema
from pipelines.data.ingest.columns import resolve_columns
from pipelines.data.ingest.errors import IngestError

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
LINE_COLUMN = "_line"
MALFORMED_COLUMN = "_malformed"
MALFORMED_REASON = "malformed_row"


@dataclass(frozen=True)
class SourceFile:
    """One landing file: its path on the filesystem, how to show it, its format."""

    path: str
    display: str
    format: str


@dataclass(frozen=True)
class RawFile:
    """A file read into canonical text columns plus ``_line`` and ``_malformed``."""

    source: SourceFile
    table: pa.Table


def detect_format(path: str) -> str | None:
    """Format from the file extension (a trailing ``.gz`` is allowed for CSV/JSON Lines)."""
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        fmt = next((f for ext, f in _EXTENSIONS.items() if name.endswith(ext)), None)
        return fmt if fmt != "parquet" else None
    return next((f for ext, f in _EXTENSIONS.items() if name.endswith(ext)), None)


def discover_sources(
    fs: pafs.FileSystem,
    paths: Sequence[str],
    fmt: str = "auto",
    display: Callable[[str], str] = str,
) -> list[SourceFile]:
    """Expand files and directories into an ordered, de-duplicated list of landing files.

    Directories are searched recursively for known extensions (hidden and
    ``_``-prefixed names skipped). A file given explicitly must have a known
    extension unless ``fmt`` names the format.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}: use auto, {', '.join(FORMATS)}")
    found: dict[str, SourceFile] = {}
    for path in paths:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise IngestError(f"{display(path)} does not exist")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            children = sorted(
                (i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File),
                key=lambda i: i.path,
            )
            for child in children:
                if _is_hidden(child.path, root=path):
                    continue
                child_fmt = fmt if fmt != "auto" else detect_format(child.path)
                if child_fmt and (fmt == "auto" or detect_format(child.path) in (None, fmt)):
                    found.setdefault(child.path, SourceFile(child.path, display(child.path),
                                                            child_fmt))
            continue
        file_fmt = fmt if fmt != "auto" else detect_format(path)
        if file_fmt is None:
            raise IngestError(
                f"{display(path)}: cannot tell the format from the extension; "
                "use .csv, .jsonl or .parquet, or pass --format"
            )
        found.setdefault(path, SourceFile(path, display(path), file_fmt))
    return list(found.values())


def _is_hidden(path: str, root: str) -> bool:
    relative = path[len(root):].strip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def read_source(
    fs: pafs.FileSystem, source: SourceFile, column_map: Mapping[str, str]
) -> RawFile:
    """Read one file into canonical text columns; raise ``IngestError`` if it is unusable."""
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    try:
        headers, columns, lines, malformed = readers[source.format](fs, source, column_map)
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        raise IngestError(
            f"{source.display}: cannot read as {source.format}: {_first_line(exc)}. "
            "Check the file is complete UTF-8 text (or Parquet) and the --format is right"
        ) from exc
    return RawFile(source, canonical_table(headers, columns, lines, malformed, column_map,
                                            source.display))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def canonical_table(
    headers: Sequence[str],
    columns: Mapping[str, pa.Array],
    lines: np.ndarray,
    malformed: np.ndarray,
    column_map: Mapping[str, str],
    display: str,
) -> pa.Table:
    """Rename to canonical names, add missing optional columns as nulls, keep line numbers."""
    if not headers and len(lines) == 0:
        resolved = {}  # an empty drop: nothing to map, zero rows read
    else:
        resolved = resolve_columns(headers, column_map, display)
    by_target = {target: header for header, target in resolved.items()}
    n = len(lines)
    arrays = {}
    for name in schema.LANDING_COLUMNS:
        header = by_target.get(name)
        arrays[name] = _as_text(columns[header]) if header is not None else pa.nulls(n, pa.string())
    arrays[LINE_COLUMN] = pa.array(lines, pa.int64())
    arrays[MALFORMED_COLUMN] = pc.if_else(
        pa.array(malformed, pa.bool_()), MALFORMED_REASON, pa.scalar(None, pa.string())
    )
    return pa.table(arrays)


def _as_text(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
        return array.cast(pa.string())
    if pa.types.is_nested(array.type):
        raise pa.ArrowInvalid(f"nested column of type {array.type} is not supported")
    return pc.cast(array, pa.string())


# --- CSV -----------------------------------------------------------------------------------
def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression="detect") as stream:
        data = stream.read()
    return data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data


def _read_csv(fs, source, column_map):
    data = _read_bytes(fs, source.path)
    if not data or data.isspace():
        return [], {}, np.empty(0, np.int64), np.empty(0, bool)
    newline = data.find(b"\n")
    header_line = (data[:newline] if newline >= 0 else data).decode("utf-8").rstrip("\r")
    headers = next(csv.reader([header_line]))
    _check_unique(headers, source)
    # Refuse forbidden or incomplete files before spending time parsing rows.
    resolve_columns(headers, column_map, source.display)
    fast = _read_csv_fast(data, headers)
    if fast is not None:
        return headers, fast[0], fast[1], np.zeros(len(fast[1]), bool)
    return _read_csv_exact(data, headers)


def _read_csv_fast(data: bytes, headers: list[str]):
    """Multi-threaded Arrow parse; ``None`` when line numbers cannot be derived from row order.

    Row *i* is on line *i + 2* only if the file has no blank lines, no rows with
    the wrong number of fields and no quoted newlines; otherwise the exact
    (slower) reader below takes over.
    """
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    table = pcsv.read_csv(
        pa.BufferReader(data),
        read_options=pcsv.ReadOptions(use_threads=True),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(headers, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    end = len(data)
    while end and data[end - 1] in b"\r\n":  # trailing newlines are not rows (no copy)
        end -= 1
    physical_lines = data.count(b"\n", 0, end) + 1
    if invalid or physical_lines != table.num_rows + 1:
        return None
    columns = {name: table.column(i) for i, name in enumerate(table.column_names)}
    return columns, np.arange(2, table.num_rows + 2, dtype=np.int64)


def _read_csv_exact(data: bytes, headers: list[str]):
    """Python ``csv`` reader that tracks the line each record starts on."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    next(reader)
    values: list[list[str | None]] = [[] for _ in headers]
    lines: list[int] = []
    malformed: list[bool] = []
    start = reader.line_num + 1
    for record in reader:
        line, start = start, reader.line_num + 1
        if not record:
            continue  # blank line: not a row
        lines.append(line)
        ok = len(record) == len(headers)
        malformed.append(not ok)
        for i, column in enumerate(values):
            column.append((record[i] or None) if ok else None)
    columns = {h: pa.array(v, pa.string()) for h, v in zip(headers, values, strict=True)}
    return headers, columns, np.array(lines, np.int64), np.array(malformed, bool)


def _check_unique(headers: Sequence[str], source: SourceFile) -> None:
    seen = set()
    for header in headers:
        if header in seen:
            raise IngestError(f"{source.display}: column {header!r} appears twice in the header")
        seen.add(header)


# --- JSON Lines ------------------------------------------------------------------------------
def _read_jsonl(fs, source, column_map):
    text = _read_bytes(fs, source.path).decode("utf-8")
    if text.lstrip().startswith("["):
        records = [(i + 1, r) for i, r in enumerate(json.loads(text))]
    else:
        records = _jsonl_records(text)
    headers: dict[str, None] = {}
    for _, record in records:
        if isinstance(record, dict):
            headers.update(dict.fromkeys(record))
    header_list = list(headers)
    resolve_columns(header_list, column_map, source.display)
    values: dict[str, list[str | None]] = {h: [] for h in header_list}
    lines, malformed = [], []
    for line, record in records:
        lines.append(line)
        ok = isinstance(record, dict)
        malformed.append(not ok)
        for header, column in values.items():
            column.append(json_text(record.get(header)) if ok else None)
    columns = {h: pa.array(v, pa.string()) for h, v in values.items()}
    return header_list, columns, np.array(lines, np.int64), np.array(malformed, bool)


_NOT_AN_OBJECT = object()


def _jsonl_records(text: str) -> list[tuple[int, object]]:
    records = []
    # split on "\n" only: str.splitlines would also break on separators inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            records.append((number, _NOT_AN_OBJECT))
    return records


def json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


# --- Parquet ---------------------------------------------------------------------------------
def _read_parquet(fs, source, column_map):
    table = pq.read_table(source.path, filesystem=fs)
    headers = table.column_names
    _check_unique(headers, source)
    resolve_columns(headers, column_map, source.display)
    columns = {name: table.column(i) for i, name in enumerate(headers)}
    n = table.num_rows
    return headers, columns, np.arange(1, n + 1, dtype=np.int64), np.zeros(n, bool)
