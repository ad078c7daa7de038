"""Fast text forms of UTC timestamps (Arrow's strftime is ~20x slower than casts)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def _naive_seconds(ts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Dropping the zone keeps the UTC wall-clock values; casting that to text
    # is fast, unlike formatting with a time zone.
    return ts.cast(pa.timestamp("s", tz="UTC")).cast(pa.timestamp("s"))


def iso_utc(ts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``YYYY-MM-DDTHH:MM:SSZ`` for each timestamp (nulls stay null)."""
    text = pc.utf8_replace_slice(pc.cast(_naive_seconds(ts), pa.string()), 10, 11, "T")
    return pc.binary_join_element_wise(text, "Z", "")


def utc_day(ts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``YYYY-MM-DD``, the UTC day of each timestamp."""
    return pc.cast(pc.cast(_naive_seconds(ts), pa.date32()), pa.string())
