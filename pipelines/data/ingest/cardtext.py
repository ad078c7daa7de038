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

Millions of values are screened by one regular expression in Arrow (RE2,
``carddata.CARD_NUMBER_PREFILTER``); only the rare matches are checked and
masked in Python with ``carddata.mask_card_numbers``, the one definition.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.compliance.carddata import CARD_NUMBER_PREFILTER, MIN_DIGITS, mask_card_numbers

CARD_IN_TEXT_REASON = "card_number_in_text"
# Fields whose card numbers are masked in place, the row kept (see the module docstring).
MASKED_IN_PLACE: frozenset[str] = frozenset({"merchant_category", "fraud_scenario"})
# The card column itself is tokenised (or masked when invalid) by ``tokenise``.
_NOT_SCREENED = frozenset({"card_number"})

Column = pa.Array | pa.ChunkedArray


def _candidates(column: Column) -> np.ndarray:
    """Rows whose text may hold a card number (a superset; empty for most columns)."""
    if not pa.types.is_string(column.type) or column.null_count == len(column):
        return np.empty(0, np.int64)
    # A card number needs 13 digits: shorter columns (codes, flags) cost one pass over offsets.
    if (pc.max(pc.binary_length(column)).as_py() or 0) < MIN_DIGITS:
        return np.empty(0, np.int64)
    hits = pc.match_substring_regex(column, CARD_NUMBER_PREFILTER)
    return np.flatnonzero(pc.fill_null(hits, False).to_numpy(zero_copy_only=False))


def mask_card_numbers_in_columns(
    columns: Mapping[str, Column],
) -> tuple[dict[str, Column], np.ndarray]:
    """Columns with every card number masked, and which rows must be quarantined.

    Returns ``(columns, quarantine)`` where ``quarantine`` is a boolean per row,
    true when a card number was found in a field not in ``MASKED_IN_PLACE``.
    Columns without a card number are returned as they were (no copy).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    quarantine = np.zeros(n, dtype=bool)
    masked_columns = dict(columns)
    for name, column in columns.items():
        if name in _NOT_SCREENED:
            continue
        rows = _candidates(column)
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
