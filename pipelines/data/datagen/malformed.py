"""Malformed rows: the dirty data a landing zone really receives.

Each class is one rule the ingest job must enforce (quarantine with a reason).
Only ordinary rows are spoiled (never fraud or AML rows, so the planted
patterns stay intact); duplicates are exact repeats placed right after the
original row, so files stay sorted by time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.schema import REQUIRED_COLUMNS
from pipelines.data.datagen.timefmt import iso_utc

MISSING_REQUIRED = "missing_required"
UNPARSEABLE_AMOUNT = "unparseable_amount"
NEGATIVE_AMOUNT = "negative_amount"
ABSURD_AMOUNT = "absurd_amount"
BAD_TIMESTAMP = "bad_timestamp"
BAD_CURRENCY = "bad_currency"
DUPLICATE_TRANSACTION_ID = "duplicate_transaction_id"
INVALID_CARD_NUMBER = "invalid_card_number"

MALFORMED_CLASSES: tuple[str, ...] = (
    MISSING_REQUIRED,
    UNPARSEABLE_AMOUNT,
    NEGATIVE_AMOUNT,
    ABSURD_AMOUNT,
    BAD_TIMESTAMP,
    BAD_CURRENCY,
    DUPLICATE_TRANSACTION_ID,
    INVALID_CARD_NUMBER,
)
ABSURD_AMOUNT_FLOOR = 1e7

Bad = tuple[str, np.ndarray]  # (column, replacement text per row)

# Not "N/A" or "NA": CSV readers take those for null, a different class.
_UNPARSEABLE = ("12,50", "abc", "1.2.3", "$$", "twelve", "12.00 USD")
_BAD_TIMESTAMPS = (
    "2026-02-30T10:00:00Z",
    "2026-01-01T25:61:00Z",
    "yesterday",
    "13/45/2026 10:00",
    "not-a-date",
)
_BAD_CURRENCIES = ("US", "DOLLARS", "U$D", "12", "EURO", "$")


@dataclass(frozen=True)
class Spoiled:
    """The table with malformed rows, and how many rows of each class it holds."""

    table: pa.Table
    counts: dict[str, int]
    # Row numbers (in ``table``) of the malformed rows, per class.
    rows: dict[str, np.ndarray]


def landing_text(table: pa.Table) -> pa.Table:
    """The landing representation: ISO-8601 UTC timestamps with seconds, as text."""
    index = table.schema.get_field_index("timestamp")
    if pa.types.is_timestamp(table.schema.field(index).type):
        table = table.set_column(index, "timestamp", iso_utc(table["timestamp"]))
    return table


def inject_malformed(table: pa.Table, rate: float, seed: int) -> Spoiled:
    """Spoil about ``rate`` of the rows, cycling through every malformed class.

    ``table`` must be in landing form (see ``landing_text``). With a positive
    rate, ``amount`` becomes a text column (it must carry values such as
    ``abc``).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"malformed rate must be in [0, 1), got {rate}")
    total = round(rate * table.num_rows)
    if total == 0:
        return Spoiled(table, dict.fromkeys(MALFORMED_CLASSES, 0), {})
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6D616C]))
    eligible = np.flatnonzero(pc.is_null(table["fraud_scenario"]).to_numpy(zero_copy_only=False))
    picked = np.sort(rng.choice(eligible, size=min(total, eligible.size), replace=False))
    kinds = rng.permutation(np.resize(np.arange(len(MALFORMED_CLASSES)), picked.size))
    chosen = {name: picked[kinds == k] for k, name in enumerate(MALFORMED_CLASSES)}

    table = table.set_column(
        table.schema.get_field_index("amount"), "amount", pc.cast(table["amount"], pa.string())
    )
    table = _missing_required(table, chosen[MISSING_REQUIRED], rng)
    for name, spoiler in _SPOILERS.items():
        column, values = spoiler(table, chosen[name], rng)
        table = _replace(table, column, chosen[name], values)
    table, rows = _duplicate(table, chosen)
    return Spoiled(table, {name: int(idx.size) for name, idx in chosen.items()}, rows)


def _unparseable(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    return "amount", rng.choice(_UNPARSEABLE, rows.size)


def _absurd(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    return "amount", np.char.mod("%.2f", rng.uniform(ABSURD_AMOUNT_FLOOR * 1.01, 5e9, rows.size))


def _bad_timestamp(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    return "timestamp", rng.choice(_BAD_TIMESTAMPS, rows.size)


def _bad_currency(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    return "currency", rng.choice(_BAD_CURRENCIES, rows.size)


def _replace(table: pa.Table, column: str, rows: np.ndarray, values: np.ndarray) -> pa.Table:
    """Set ``column`` at ``rows`` (ascending) to ``values`` (text or null)."""
    if rows.size == 0:
        return table
    index = table.schema.get_field_index(column)
    original = table.column(index).combine_chunks()
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    replacement = pa.array(values, type=original.type)
    return table.set_column(
        index, column, pc.replace_with_mask(original, pa.array(mask), replacement)
    )


def _missing_required(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Blank one required field per row (a different field from row to row).

    Only ``REQUIRED_COLUMNS`` (timestamp, amount): a blank customer or terminal
    id is valid data (stored null), not a malformed row.
    """
    field = rng.integers(0, len(REQUIRED_COLUMNS), rows.size)
    for k, column in enumerate(REQUIRED_COLUMNS):
        these = rows[field == k]
        nulls = pa.nulls(these.size, table.schema.field(column).type)
        table = _replace(table, column, these, nulls)
    return table


def _negative(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    """A negated amount (refunds sent down the purchase feed); zero is valid, not spoiled."""
    current = table["amount"].take(pa.array(rows)).to_numpy(zero_copy_only=False).astype(str)
    return "amount", np.char.add("-", current)


def _broken_cards(table: pa.Table, rows: np.ndarray, rng: np.random.Generator) -> Bad:
    """Change the check digit: any single-digit change fails the Luhn check."""
    cards = table["card_number"].take(pa.array(rows)).to_numpy(zero_copy_only=False).astype(str)
    check = np.array([int(c[-1]) for c in cards], dtype=np.int64)
    wrong = (check + rng.integers(1, 10, rows.size)) % 10
    return "card_number", np.char.add(
        np.array([c[:-1] for c in cards], dtype=str), wrong.astype(str)
    )


# Classes that overwrite one column with bad text (missing fields and
# duplicates change rows differently).
_SPOILERS: dict[str, Callable[[pa.Table, np.ndarray, np.random.Generator], Bad]] = {
    UNPARSEABLE_AMOUNT: _unparseable,
    NEGATIVE_AMOUNT: _negative,
    ABSURD_AMOUNT: _absurd,
    BAD_TIMESTAMP: _bad_timestamp,
    BAD_CURRENCY: _bad_currency,
    INVALID_CARD_NUMBER: _broken_cards,
}


def _duplicate(
    table: pa.Table, chosen: dict[str, np.ndarray]
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Repeat the chosen rows right after themselves; returns the new row numbers."""
    originals = chosen[DUPLICATE_TRANSACTION_ID]
    take = np.sort(np.concatenate([np.arange(table.num_rows), originals]), kind="stable")
    # Row r moves down by the number of duplicates inserted before it.
    shift = np.searchsorted(originals, np.arange(table.num_rows), side="left")
    rows = {name: idx + shift[idx] for name, idx in chosen.items()}
    rows[DUPLICATE_TRANSACTION_ID] = originals + shift[originals] + 1
    return table.take(pa.array(take)), rows
