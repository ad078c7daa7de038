"""Card numbers typed into text fields: masked everywhere, and the row quarantined where needed.

A landing file can carry a clear card number in any field, not only
``card_number`` (a customer id that is really the card, a note in the
merchant category). Every text field of every row is checked as it is read
(batch and stream share this through ``sources.canonical_table``), and each
Luhn-valid 13-19 digit number (also grouped by spaces or dashes) is replaced
by its masked form (first six + last four digits) before anything is stored,
counted or printed. Then, per field:

- free text (``MASKED_IN_PLACE``: merchant_category, fraud_scenario): the
  masked text is kept and the row goes on; a note is not worth losing a row;
- every other field (ids, timestamp, amount, codes, flags): the row is
  quarantined with reason ``card_number_in_text``, showing the masked value. A
  masked id would merge different entities and a masked number is no value;
  the fix is to map that column to ``card_number`` (then it is tokenised).

Millions of values are screened cheaply (``shapes``: too short, or an ISO
timestamp) and then by one regular expression in Arrow (RE2,
``carddata.CARD_NUMBER_PREFILTER``); only the rare matches are checked and
masked in Python with ``carddata.mask_card_numbers``, the one definition.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.compliance.carddata import CARD_NUMBER_PREFILTER, MIN_DIGITS, mask_card_numbers
from pipelines.data.ingest import shapes

CARD_IN_TEXT_REASON = "card_number_in_text"
# Fields whose card numbers are masked in place, the row kept (see the module docstring).
MASKED_IN_PLACE: frozenset[str] = frozenset({"merchant_category", "fraud_scenario"})
# The card column itself is tokenised (or masked when invalid) by ``tokenise``.
_NOT_SCREENED = frozenset({"card_number"})

Column = pa.Array | pa.ChunkedArray


def _candidates(column: Column, cannot_hold: np.ndarray | None) -> np.ndarray:
    """Rows whose text may hold a card number (a superset; empty for most columns).

    A card number needs 13 bytes (one numpy pass over the offsets), and the
    caller may know more rows that cannot hold one (ISO timestamps); only the
    rest meet the regular expression, which costs ~50 ns a value.
    """
    if (not pa.types.is_string(column.type) or column.null_count == len(column)
            or pc.max(pc.binary_length(column)).as_py() < MIN_DIGITS):
        return np.empty(0, np.int64)
    possible = shapes.byte_lengths(column) >= MIN_DIGITS
    if cannot_hold is not None:
        possible &= ~cannot_hold
    rows = np.flatnonzero(possible)
    if rows.size == 0:
        return rows
    values = column if rows.size == len(column) else column.take(pa.array(rows))
    if rows.size >= _SEARCH_JOINED_FROM and not _any_match(values):
        return np.empty(0, np.int64)
    hits = pc.fill_null(pc.match_substring_regex(values, CARD_NUMBER_PREFILTER), False)
    return rows[hits.to_numpy(zero_copy_only=False)]


# From this many values, one search over all of them joined comes first: RE2 scans a long
# string at ~1 GB/s but pays ~40 ns per separate value, and most columns hold no card.
_SEARCH_JOINED_FROM = 1_000
_JOINABLE_BYTES = 2**30  # a joined string (values + newlines) must stay under 2 GiB


def _any_match(values: Column) -> bool:
    """Whether any value matches the prefilter, searched as one newline-joined string.

    The newline is not alphanumeric, so it bounds each value just as the
    start and end of a separate value would: nothing is found that a per-value
    search would miss, and nothing extra.
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        if chunk.nbytes > _JOINABLE_BYTES:
            return True  # too big for one string: let the per-value search decide
        if chunk.null_count:
            chunk = pc.fill_null(chunk, "")
        whole = pa.ListArray.from_arrays(pa.array([0, len(chunk)], pa.int32()), chunk)
        if pc.any(pc.match_substring_regex(pc.binary_join(whole, "\n"),
                                           CARD_NUMBER_PREFILTER)).as_py():
            return True
    return False


def mask_card_numbers_in_columns(
    columns: Mapping[str, Column],
    cannot_hold: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Column], np.ndarray]:
    """Columns with every card number masked, and which rows must be quarantined.

    Returns ``(columns, quarantine)`` where ``quarantine`` is a boolean per row,
    true when a card number was found in a field not in ``MASKED_IN_PLACE``.
    Columns without a card number are returned as they were (no copy).
    ``cannot_hold[name]`` marks rows known to hold none (skipped).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    quarantine = np.zeros(n, dtype=bool)
    masked_columns = dict(columns)
    for name, column in columns.items():
        if name in _NOT_SCREENED:
            continue
        rows = _candidates(column, (cannot_hold or {}).get(name))
        if rows.size == 0:
            continue
        values = column.take(pa.array(rows)).to_pylist()
        masked = [mask_card_numbers(v) for v in values]
        changed = np.array([m != v for m, v in zip(masked, values, strict=True)], dtype=bool)
        if not changed.any():
            continue
        rows = rows[changed]
        selector = np.zeros(n, dtype=bool)
        selector[rows] = True
        replacement = pa.array([m for m, c in zip(masked, changed, strict=True) if c],
                               pa.string())
        plain = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        masked_columns[name] = pc.replace_with_mask(plain, pa.array(selector), replacement)
        if name not in MASKED_IN_PLACE:
            quarantine[rows] = True
    return masked_columns, quarantine
