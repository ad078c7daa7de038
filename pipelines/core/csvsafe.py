"""CSV a spreadsheet can open safely: the one way the product writes CSV for people.

Report CSVs (``ctr.csv``, ``structuring_flags.csv``, ``sar_candidates.csv``, ...) and
``fraudops query --format csv`` are opened by compliance officers in a spreadsheet,
which runs any cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return as
a formula (CSV injection). Following OWASP, such a *text* cell is written with a
leading single quote, which spreadsheets show but do not evaluate.

Decision on numbers: only text is neutralised. A value typed as a number (Python
``int``/``float``/``Decimal``, an Arrow integer/floating/decimal column) is written as
the number, so ``-12.5`` in an amount column stays ``-12.5`` and sums in the
spreadsheet; a number cannot carry a formula. Text that merely looks like a negative
number (``"-12.5"`` in a text column) is quoted like any other text, because the
writer cannot know how the spreadsheet will read it.

Nested values (Arrow lists, structs, maps) have no CSV form: they are written as JSON
text, then neutralised like any text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"
_FORMULA_PATTERN = "^[=+\\-@\t\r]"


def neutralise(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return ESCAPE + value
    return value


def write_rows(handle: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Header and rows through ``csv.writer``, every text cell neutralised.

    ``handle`` must be opened with ``newline=""`` (the csv module's requirement).
    """
    writer = csv.writer(handle)
    writer.writerow([neutralise(name) for name in columns])
    writer.writerows([neutralise(cell) for cell in row] for row in rows)


_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
               pa.types.is_binary, pa.types.is_large_binary)


def _is_nested(kind: pa.DataType) -> bool:
    return pa.types.is_nested(kind) or pa.types.is_map(kind)


def _json_text(column: pa.ChunkedArray) -> pa.Array:
    return pa.array(
        [None if value is None else json.dumps(value, default=str, ensure_ascii=False)
         for value in column.to_pylist()],
        pa.string(),
    )


def _safe_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    risky = pc.match_substring_regex(column, _FORMULA_PATTERN)
    escape, empty = (pa.scalar(part, column.type) for part in (ESCAPE, ""))
    return pc.if_else(risky, pc.binary_join_element_wise(escape, column, empty), column)


def spreadsheet_safe(table: pa.Table) -> pa.Table:
    """``table`` with nested columns as JSON text and every text cell neutralised."""
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = kind.value_type
        if _is_nested(kind):
            column = _json_text(column)
            kind = pa.string()
        if any(test(kind) for test in _TEXT_TYPES):
            column = _safe_text(column)
        columns.append(column)
    names = [neutralise(name) for name in table.column_names]
    return pa.Table.from_arrays(columns, names=names)


def write_table(table: pa.Table, sink: Any) -> None:
    """An Arrow table as CSV (header first) to a path or binary stream, spreadsheet-safe."""
    pcsv.write_csv(spreadsheet_safe(table), sink)
