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
  quarantined with reason ``card_number_in_text:<column>`` (the column as the
  file names it), showing the masked value. A masked id would merge different
  entities and a masked number is no value; the fix is to map that column to
  ``card_number`` (then it is tokenised and the per-card features key on its
  token), which the run's notes say (``card_column_advice``).

A key column (transaction, customer or terminal id) or a user feature column
most of whose non-empty values in the file or micro-batch are Luhn-valid 12-19 digit numbers holds
card numbers, not ids: then each of its 12-19 digit values is masked and its
row quarantined the same way, so the 12-digit cards (Maestro) the text scan
leaves alone are not stored in clear either. The text scan itself starts at
13 digits, where a 12-digit reference number in a note or id is no card.

Millions of values are screened cheaply (``shapes``: too short, or an ISO
timestamp) and then by one regular expression in Arrow (RE2,
``carddata.CARD_NUMBER_PREFILTER``); only the rare matches are checked and
masked in Python with ``carddata.mask_card_numbers``, the one definition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.compliance.carddata import (
    CARD_NUMBER_PREFILTER,
    MIN_DIGITS,
    mask,
    mask_card_numbers,
)
from pipelines.core.schema import ID_COLUMNS
from pipelines.data.ingest import shapes
from pipelines.data.ingest.tokenise import MAX_CARD_DIGITS, MIN_CARD_DIGITS, luhn_valid_matrix

CARD_IN_TEXT_REASON = "card_number_in_text"
# Fields whose card numbers are masked in place, the row kept (see the module docstring).
MASKED_IN_PLACE: frozenset[str] = frozenset({"merchant_category", "fraud_scenario"})
# Key columns read as card data whole when most of their values are card numbers (the
# user's feature columns too: ``canonical_table`` adds them).
CARD_EVIDENCE_COLUMNS: frozenset[str] = frozenset(ID_COLUMNS)
# The card column itself is tokenised (or masked when invalid) by ``tokenise``.
_NOT_SCREENED = frozenset({"card_number"})
# Below this many values (a quiet stream's micro-batch) one 12-digit id in ten passing Luhn
# by chance would make a majority: then only numbers that are cards on their own count as
# evidence: Luhn-valid and, at 12 digits, in a range of the only 12-digit cards, Maestro
# (ISO/IEC 7812 issuers 5018, 5020, 5038, 5893, 6304, 6759, 6761-6763; 56-58, 0604, 6390
# as card generators such as Faker issue them).
MIN_EVIDENCE_VALUES = 20
_MAESTRO_12_DIGIT_PREFIXES = {4: (5018, 5020, 5038, 5893, 6304, 6390, 6759, 6761, 6762, 6763,
                                  604), 2: (56, 57, 58)}

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


# Longest card number written with a space or dash between every two digits and a space
# either side.
_MAX_CARD_BYTES = 2 * MAX_CARD_DIGITS + 1


def _card_column_rows(column: Column) -> tuple[np.ndarray, list[str]]:
    """Rows of a key column that evidently holds card numbers, and their masked values.

    Evidence: more than half of the column's non-empty values in this file (or
    micro-batch) are Luhn-valid 12-19 digit numbers (digits, maybe grouped by
    spaces or dashes). Then every such 12-19 digit value in it is card data, as
    in ``card_number``: the 12-digit ones the text scan (13 digits up) lets
    through, and the mistyped ones failing Luhn. Otherwise nothing: a column of
    12-digit ids, a tenth of which pass Luhn by chance, is ids. Among fewer than
    ``MIN_EVIDENCE_VALUES`` values only cards on their own count towards the
    majority (Luhn-valid; at 12 digits, in a Maestro range), so a lone 12-digit
    id that passes Luhn by chance is not taken for a card. Shapes and
    Luhn digits are checked in numpy; only the card rows' distinct values are
    masked in Python.
    """
    none = (np.empty(0, np.int64), [])
    if not pa.types.is_string(column.type):
        return none
    nonempty = int(np.count_nonzero(shapes.byte_lengths(column)))
    rows = np.flatnonzero(shapes.digit_group_edges(column, MIN_CARD_DIGITS, _MAX_CARD_BYTES))
    if 2 * rows.size <= nonempty:  # most values are something else (names, uuids, codes)
        return none
    values = column.take(pa.array(rows))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    card = np.zeros(len(values), dtype=bool)
    valid = np.zeros(len(values), dtype=bool)
    alone = np.zeros(len(values), dtype=bool)  # a card by itself, whatever the column holds
    for positions, digits in shapes.digit_matrices(values, MIN_CARD_DIGITS, MAX_CARD_DIGITS):
        card[positions] = True
        valid[positions] = luhn = luhn_valid_matrix(digits)
        alone[positions] = luhn & (digits.shape[1] > MIN_CARD_DIGITS or _maestro_12(digits))
    evidence = alone if nonempty < MIN_EVIDENCE_VALUES else valid
    if 2 * int(np.count_nonzero(evidence)) <= nonempty:
        return none
    encoded = pc.dictionary_encode(values.filter(pa.array(card)))
    masked = [mask(re.sub(r"\D", "", v)) for v in encoded.dictionary.to_pylist()]
    return rows[card], [masked[i] for i in encoded.indices.to_numpy(zero_copy_only=False)]


def _maestro_12(digits: np.ndarray) -> np.ndarray:
    """Per row of a (values, 12) digit matrix: in a 12-digit Maestro range."""
    found = np.zeros(len(digits), dtype=bool)
    for width, prefixes in _MAESTRO_12_DIGIT_PREFIXES.items():
        prefix = digits[:, :width].astype(np.int64) @ (10 ** np.arange(width - 1, -1, -1))
        found |= np.isin(prefix, prefixes)
    return found


def _replaced(column: Column, rows: np.ndarray, values: list[str]) -> pa.Array:
    """``column`` with ``values`` at ``rows`` (sorted, distinct)."""
    selector = np.zeros(len(column), dtype=bool)
    selector[rows] = True
    plain = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.replace_with_mask(plain, pa.array(selector), pa.array(values, pa.string()))


def mask_card_numbers_in_columns(
    columns: Mapping[str, Column],
    cannot_hold: Mapping[str, np.ndarray] | None = None,
    evidence: Collection[str] = CARD_EVIDENCE_COLUMNS,
) -> tuple[dict[str, Column], dict[str, np.ndarray]]:
    """Columns with every card number masked, and the rows each column has quarantined.

    Returns ``(columns, quarantine)``: ``quarantine[name]`` is a boolean per row,
    true where a card number was found in ``name`` (a field not in
    ``MASKED_IN_PLACE``); names without such rows are left out. The ``evidence``
    columns (keys, the user's features) that evidently hold card numbers are
    card data whole (``_card_column_rows``). Columns without a card number are returned as
    they were (no copy). ``cannot_hold[name]`` marks rows known to hold none.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    quarantine: dict[str, np.ndarray] = {}
    masked_columns = dict(columns)
    for name, column in columns.items():
        if name in _NOT_SCREENED:
            continue
        found = np.zeros(n, dtype=bool)
        if name in evidence:
            rows, masked = _card_column_rows(column)
            if rows.size:
                column = _replaced(column, rows, masked)
                found[rows] = True
        rows = _candidates(column, (cannot_hold or {}).get(name))
        if rows.size:
            values = column.take(pa.array(rows)).to_pylist()
            masked = [mask_card_numbers(v) for v in values]
            changed = np.array([m != v for m, v in zip(masked, values, strict=True)], dtype=bool)
            if changed.any():
                column = _replaced(column, rows[changed],
                                   [m for m, c in zip(masked, changed, strict=True) if c])
                found[rows[changed]] = True
        if found.any():
            masked_columns[name] = column
            if name not in MASKED_IN_PLACE:
                quarantine[name] = found
    return masked_columns, quarantine


def card_in_text_reason(column: str) -> str:
    """The quarantine reason of a row whose ``column`` (as the file names it) held a card."""
    return f"{CARD_IN_TEXT_REASON}:{mask_card_numbers(column)}"


def card_column_advice(reasons: Mapping[str, int]) -> list[str]:
    """For each column whose card numbers quarantined rows: which, how many, and the fix."""
    advice = []
    for reason, rows in reasons.items():
        kind, _, column = reason.partition(":")
        if kind != CARD_IN_TEXT_REASON or not column:
            continue
        advice.append(
            f"column {column!r} held card numbers in {rows:,} row(s), quarantined as "
            f"{reason} (masked, never stored in clear). If it is the card number, map it to "
            f"card_number in the column map ({json.dumps({column: 'card_number'})}): it is then "
            "tokenised, and the per-card features key on its token. Otherwise correct those "
            "values at the source."
        )
    return advice
