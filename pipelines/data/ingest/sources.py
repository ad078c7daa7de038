"""Finding landing files and reading them into one all-text canonical table.

Every value is read as text first, so a rejected row can be quarantined with
exactly what the file said, and parsing rules live in one place
(``validation``). Each row keeps the physical lines it came from
(``_line`` .. ``_line_end``): for CSV the header is line 1 and a quoted value
may span lines; for JSON Lines the physical line; for Parquet the 1-based row
number. Files are read through a ``pyarrow.fs.FileSystem`` so the Glue job
reads S3 with the same code.

Nothing is lost silently. Line terminators are ``\n``, ``\r\n`` or ``\r``
(mixed is fine). A CSV row is parsed or quarantined as ``malformed_row`` with
the lines it spans; every physical line is accounted for as the header, a
blank line or part of exactly one row, and ``read_source`` counts the lines
from the bytes independently of the parser and refuses the file when the two
disagree. Card numbers in any text field are masked as the table is built
(``cardtext``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.compliance.carddata import mask_card_numbers
from pipelines.core import schema
from pipelines.data.ingest import shapes
from pipelines.data.ingest.cardtext import (
    CARD_EVIDENCE_COLUMNS,
    card_in_text_reason,
    mask_card_numbers_in_columns,
)
from pipelines.data.ingest.columns import check_header, resolve_columns, user_features
from pipelines.data.ingest.errors import IngestError, card_numbers_masked

# A 200 kB quoted value is data, not an attack: the whole file is in memory already,
# so the csv module's 128 kB per-field default would only turn good rows into crashes.
csv.field_size_limit(2**31 - 1)

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
LINE_END_COLUMN = "_line_end"
# A reason found while reading (the row is quarantined for it before any other rule).
READ_REASON_COLUMN = "_read_reason"
# True where ``timestamp`` is exactly YYYY-MM-DDTHH:MM:SSZ (``shapes``): it then holds no
# card number and validation needs no regular expression for it.
ISO_SHAPED_COLUMN = "_iso_shaped"
# True for rows of a file without a transaction id column: validation derives their id.
DERIVE_ID_COLUMN = "_derive_id"
# Field metadata marking a user feature column of the raw table, and its kind.
FEATURE_KIND_KEY = b"fraudops.feature"
MALFORMED_REASON = "malformed_row"


@dataclass(frozen=True)
class SourceFile:
    """One landing file: its path on the filesystem, how to show it, its format."""

    path: str
    display: str
    format: str


@dataclass(frozen=True)
class RawFile:
    """A file read into canonical text columns plus ``_line``, ``_line_end``, ``_read_reason``.

    ``lines`` is the file's physical line count (rows for Parquet and JSON
    arrays) taken from the bytes; ``lines_accounted`` is how many of them the
    parser placed (header, blank, or part of a row). ``sha256`` identifies the
    content wherever the file came from.
    """

    source: SourceFile
    table: pa.Table
    sha256: str
    lines: int
    lines_accounted: int


@dataclass(frozen=True)
class _Parsed:
    """What a format reader returns: header, text columns and line bookkeeping."""

    headers: list[str]
    columns: dict[str, pa.Array | pa.ChunkedArray]
    lines: np.ndarray  # first physical line of each row
    line_ends: np.ndarray  # last physical line of each row
    malformed: np.ndarray  # bool per row
    physical_lines: int
    accounted_lines: int


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
                    found.setdefault(child.path, SourceFile(child.path, _shown(display, child.path),
                                                            child_fmt))
            continue
        file_fmt = fmt if fmt != "auto" else detect_format(path)
        if file_fmt is None:
            raise IngestError(
                f"{display(path)}: cannot tell the format from the extension; "
                "use .csv, .jsonl or .parquet, or pass --format"
            )
        found.setdefault(path, SourceFile(path, _shown(display, path), file_fmt))
    return list(found.values())


def _shown(display: Callable[[str], str], path: str) -> str:
    """How a file is named in messages and ``source_file``: never with a card number in it."""
    return mask_card_numbers(display(path))


def _is_hidden(path: str, root: str) -> bool:
    relative = path[len(root):].strip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


# What a malformed file raises while being parsed (a file the user must fix, not a bug).
_UNREADABLE = (pa.ArrowInvalid, UnicodeDecodeError, OSError, csv.Error, json.JSONDecodeError)


def read_source(
    fs: pafs.FileSystem, source: SourceFile, column_map: Mapping[str, str]
) -> RawFile:
    """Read one file into canonical text columns; raise ``IngestError`` if it is unusable."""
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    with card_numbers_masked():
        data = _read_bytes(fs, source.path, parquet=source.format == "parquet")
        try:
            parsed = readers[source.format](data, source, column_map)
        except _UNREADABLE as exc:
            # ``from None``: a parser's message may quote the line (and its card number).
            raise IngestError(
                f"{source.display}: cannot read as {source.format}: {_first_line(exc)}. "
                "Check the file is complete UTF-8 text (or Parquet) and the --format is right"
            ) from None
        declared = [name for name in user_features(column_map) if name not in parsed.headers]
        if declared and parsed.headers:
            raise IngestError(
                f"{source.display}: the column map declares feature column(s) "
                f"{', '.join(map(repr, declared))}, which the file does not have (it has: "
                f"{', '.join(parsed.headers)}); fix the names in the map or the file"
            )
        if parsed.accounted_lines != parsed.physical_lines:
            raise IngestError(
                f"{source.display}: the reader accounted for {parsed.accounted_lines:,} of the "
                f"file's {parsed.physical_lines:,} lines, so rows could be lost; nothing from "
                "this file was stored. This is a bug in fraudops' reader: please report it "
                "with the file"
            )
        table = canonical_table(parsed.headers, parsed.columns, parsed.lines, parsed.malformed,
                                column_map, source.display, line_ends=parsed.line_ends)
    return RawFile(source, table, hashlib.sha256(data).hexdigest(), parsed.physical_lines,
                   parsed.accounted_lines)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def canonical_table(
    headers: Sequence[str],
    columns: Mapping[str, pa.Array | pa.ChunkedArray],
    lines: np.ndarray,
    malformed: np.ndarray,
    column_map: Mapping[str, str],
    display: str,
    line_ends: np.ndarray | None = None,
) -> pa.Table:
    """Rename to canonical names, add missing optional columns as nulls, keep line numbers.

    Card numbers in any text field are masked here (``cardtext``), so no
    caller, batch or stream, ever holds one outside ``card_number``; a row
    whose key or typed field held one gets read reason ``card_number_in_text:<column>``,
    the column named as in ``headers``.
    The user's feature columns follow the canonical ones under their own names,
    as text, their kind in the field metadata (``FEATURE_KIND_KEY``); one the
    map declares but ``headers`` lack is null (a stream record without it).
    """
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
    features = user_features(column_map)
    for name in features:
        arrays[name] = _as_text(columns[name]) if name in resolved else pa.nulls(n, pa.string())
    iso_shaped = shapes.common_iso_timestamp(arrays["timestamp"])
    arrays, card_in_text = mask_card_numbers_in_columns(
        arrays, {"timestamp": iso_shaped}, evidence={*CARD_EVIDENCE_COLUMNS, *features})
    quarantined = np.zeros(n, dtype=bool)
    arrays[LINE_COLUMN] = pa.array(lines, pa.int64())
    arrays[LINE_END_COLUMN] = pa.array(lines if line_ends is None else line_ends, pa.int64())
    reasons = np.full(n, None, dtype=object)
    for name, rows in card_in_text.items():  # the first column holding one names the reason
        rows = rows & ~quarantined
        reasons[rows] = card_in_text_reason(by_target.get(name, name))
        quarantined |= rows
    reasons[np.asarray(malformed, dtype=bool)] = MALFORMED_REASON  # first rule wins
    arrays[ISO_SHAPED_COLUMN] = pa.array(iso_shaped, pa.bool_())
    arrays[DERIVE_ID_COLUMN] = pa.repeat(pa.scalar("transaction_id" not in by_target), n)
    arrays[READ_REASON_COLUMN] = (
        pa.array(reasons, pa.string()) if quarantined.any() or np.any(malformed)
        else pa.nulls(n, pa.string())
    )
    fields = [pa.field(name, array.type, metadata={FEATURE_KIND_KEY: features[name].encode()}
                       if name in features else None) for name, array in arrays.items()]
    return pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields))


def _as_text(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
        return array.cast(pa.string())
    if pa.types.is_nested(array.type):
        raise pa.ArrowInvalid(f"nested column of type {array.type} is not supported")
    text = pc.cast(array, pa.string())
    if pa.types.is_floating(array.type):
        text = _positional(array, text)
    return text


def plain_number(value: float) -> str:
    """A float as plain decimal text (``1e-07`` -> ``0.0000001``): the only notation accepted."""
    text = repr(value)
    if "e" not in text or not np.isfinite(value):
        return text
    return np.format_float_positional(value, trim="-")


def _positional(numbers: pa.Array | pa.ChunkedArray, text: pa.Array | pa.ChunkedArray):
    """Replace exponent notation Arrow's cast produced (a typed number is not text notation)."""
    exponent = pc.fill_null(pc.match_substring(text, "e"), False)
    rows = np.flatnonzero(exponent.to_numpy(zero_copy_only=False))
    if rows.size == 0:
        return text
    values = [plain_number(v) for v in numbers.take(pa.array(rows)).to_pylist()]
    mask = np.zeros(len(text), dtype=bool)
    mask[rows] = True
    plain = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    return pc.replace_with_mask(plain, pa.array(mask), pa.array(values, pa.string()))


def _read_bytes(fs: pafs.FileSystem, path: str, parquet: bool = False) -> bytes:
    with fs.open_input_stream(path, compression=None if parquet else "detect") as stream:
        data = stream.read()
    return data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data


def physical_lines(data: bytes | str, start: int = 0, end: int | None = None) -> int:
    """Lines in ``data[start:end]``: ``\n``, ``\r\n`` and ``\r`` each end one; a last
    line without a terminator counts too. Counted on the bytes, independently of any parser.
    """
    end = len(data) if end is None else end
    if end <= start:
        return 0
    lf, cr = (b"\n", b"\r") if isinstance(data, bytes) else ("\n", "\r")
    terminators = data.count(lf, start, end)
    if data.find(cr, start, end) >= 0:  # find is a fast scan; count only when there is one
        terminators += data.count(cr, start, end) - data.count(cr + lf, start, end)
    return terminators + (data[end - 1:end] not in (lf, cr))


# --- CSV -----------------------------------------------------------------------------------
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # one physical line, terminator kept
_NOT_SPACE = re.compile(rb"\S")


def _read_csv(data: bytes, source: SourceFile, column_map: Mapping[str, str]) -> _Parsed:
    total = physical_lines(data)
    if not data or data.isspace():
        return _no_rows([], total)
    text_end = _first_terminator(data)
    header_line = data[:text_end].decode("utf-8")
    headers = next(csv.reader([header_line]))
    _check_unique(headers, source)
    check_header(headers, column_map, source.display)
    # Refuse forbidden or incomplete files before spending time parsing rows.
    resolve_columns(headers, column_map, source.display)
    if not _NOT_SPACE.search(data, text_end):  # header only, with or without a final newline
        return _no_rows(headers, total)
    fast = _read_csv_fast(data, headers, total)
    return fast if fast is not None else _read_csv_exact(data.decode("utf-8"), headers, total)


def _first_terminator(data: bytes) -> int:
    newline = data.find(b"\n")
    newline = len(data) if newline < 0 else newline
    carriage = data.find(b"\r", 0, newline)  # only a CR before the first LF matters
    return newline if carriage < 0 else carriage


def _no_rows(headers: list[str], total: int) -> _Parsed:
    empty = np.empty(0, np.int64)
    return _Parsed(headers, {h: pa.array([], pa.string()) for h in headers}, empty, empty,
                   np.empty(0, bool), total, total)


def _read_csv_fast(data: bytes, headers: list[str], total: int) -> _Parsed | None:
    """Multi-threaded Arrow parse; ``None`` unless every physical line is exactly one row.

    Row *i* is on line *i + 2* only if the file has no blank lines (except at
    the end), no rows with the wrong number of fields and no value spanning
    lines; anything else goes to the exact (slower) reader below.
    """
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
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
    except pa.ArrowInvalid:
        return None  # e.g. a quote never closed: the exact reader says which lines
    end = len(data)
    while end and data[end - 1] in b"\r\n":  # trailing blank lines are not rows (no copy)
        end -= 1
    trailing_blank = physical_lines(data, end) - 1 if end < len(data) else 0
    if invalid or total - trailing_blank != table.num_rows + 1 or _spans_lines(table):
        return None
    lines = np.arange(2, table.num_rows + 2, dtype=np.int64)
    columns = {name: table.column(i) for i, name in enumerate(table.column_names)}
    return _Parsed(headers, columns, lines, lines, np.zeros(len(lines), bool), total, total)


def _spans_lines(table: pa.Table) -> bool:
    """True if the last row holds a line break: a quote left open at the end of the file.

    Anywhere else a value spanning lines makes fewer rows than lines, which the
    caller already checks; only at the very end can it hide in trailing newlines.
    """
    if table.num_rows == 0:
        return False
    last = table.slice(table.num_rows - 1)
    return any(value is not None and ("\n" in value or "\r" in value)
               for value in last.to_pylist()[0].values())


class _Lines:
    """Physical lines handed to ``csv.reader`` one by one, so the lines a record
    consumed are known and reading can restart at any line."""

    def __init__(self, lines: list[str], position: int) -> None:
        self.lines = lines
        self.position = position  # 0-based index of the next line to hand out

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.position >= len(self.lines):
            raise StopIteration
        self.position += 1
        return self.lines[self.position - 1]


def _read_csv_exact(text: str, headers: list[str], total: int) -> _Parsed:
    """Line-tracking reader for files the fast path declined.

    A record on one line with the wrong number of fields is ``malformed_row``.
    A record spanning lines (a quoted line break) is kept only if its quotes
    close and it has the header's number of fields; otherwise the quote was
    never meant to span lines (or never closes): its first line is quarantined
    and reading resumes on the next line, so rows after a stray quote survive.
    """
    physical = _LINE.findall(text)
    width = len(headers)
    values: list[list[str | None]] = [[] for _ in headers]
    starts: list[int] = []
    ends: list[int] = []
    malformed: list[bool] = []
    blank = 0
    source = _Lines(physical, 1)  # line 1 is the header

    def add(first: int, last: int, record: list[str] | None) -> None:
        starts.append(first + 1)
        ends.append(last + 1)
        malformed.append(record is None)
        for i, column in enumerate(values):
            column.append((record[i] or None) if record is not None else None)

    while source.position < len(physical):
        reader = csv.reader(source)
        while True:
            first = source.position
            try:
                record = next(reader)
            except StopIteration:
                break
            last = source.position - 1
            if not record:
                blank += 1
                continue
            if last > first or last == len(physical) - 1:
                raw = "".join(physical[first:last + 1])
                if _ends_inside_quotes(raw) or (last > first and len(record) != width):
                    add(first, first, None)
                    source.position = first + 1
                    break  # a fresh reader starts on the next line
            add(first, last, record if len(record) == width else None)
    accounted = 1 + blank + sum(e - s + 1 for s, e in zip(starts, ends, strict=True))
    columns = {h: pa.array(v, pa.string()) for h, v in zip(headers, values, strict=True)}
    return _Parsed(headers, columns, np.array(starts, np.int64), np.array(ends, np.int64),
                   np.array(malformed, bool), total, accounted)


def _ends_inside_quotes(raw: str) -> bool:
    """True if a quoted field in ``raw`` (one record's text) is still open at its end.

    The csv module, at the end of the input, silently closes such a field;
    this walks the quoting rules (a quote opens a field only at its start,
    ``""`` inside is a literal quote) to tell.
    """
    quoted = False
    field_start = True
    i = 0
    while i < len(raw):
        if quoted:  # jump to the next quote: a 200 kB value is one find, not a loop
            i = raw.find('"', i)
            if i < 0:
                return True
            if raw.startswith('"', i + 1):
                i += 2
                continue
            quoted = field_start = False
        elif raw[i] == '"' and field_start:
            quoted = True
        else:
            field_start = raw[i] in ",\r\n"
        i += 1
    return quoted


def _check_unique(headers: Sequence[str], source: SourceFile) -> None:
    seen = set()
    for header in headers:
        if header in seen:
            raise IngestError(f"{source.display}: column {header!r} appears twice in the header")
        seen.add(header)


# --- JSON Lines ------------------------------------------------------------------------------
def _read_jsonl(data: bytes, source: SourceFile, column_map: Mapping[str, str]) -> _Parsed:
    text = data.decode("utf-8")
    if text.lstrip().startswith("["):  # one JSON array: elements are the "lines"
        records = [(i + 1, r) for i, r in enumerate(json.loads(text))]
        total = accounted = len(records)
    else:
        records, blank = _jsonl_records(text)
        # JSON Lines ends lines with "\n" only ("\r\n" leaves a "\r" JSON ignores).
        total = text.count("\n") + (not text.endswith("\n") and bool(text))
        accounted = len(records) + blank
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
    line_numbers = np.array(lines, np.int64)
    return _Parsed(header_list, columns, line_numbers, line_numbers,
                   np.array(malformed, bool), total, accounted)


_NOT_AN_OBJECT = object()


def _jsonl_records(text: str) -> tuple[list[tuple[int, object]], int]:
    """``(line, parsed object)`` for every non-blank line, and the number of blank lines."""
    records = []
    blank = 0
    # split on "\n" only: str.splitlines would also break on separators inside JSON strings.
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the empty string after the final newline is not a line
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            records.append((number, _NOT_AN_OBJECT))
    return records, blank


def json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return plain_number(value)
    return json.dumps(value)


# --- Parquet ---------------------------------------------------------------------------------
def _read_parquet(data: bytes, source: SourceFile, column_map: Mapping[str, str]) -> _Parsed:
    table = pq.read_table(pa.BufferReader(data))
    headers = table.column_names
    _check_unique(headers, source)
    resolve_columns(headers, column_map, source.display)
    columns = {name: table.column(i) for i, name in enumerate(headers)}
    n = table.num_rows
    lines = np.arange(1, n + 1, dtype=np.int64)
    return _Parsed(headers, columns, lines, lines, np.zeros(n, bool), n, n)
