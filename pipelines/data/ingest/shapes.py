"""Cheap per-row facts about text columns, computed on Arrow's buffers with numpy.

A regular expression costs ~50 ns per value in Arrow or DuckDB, even a
trivial one: at a million rows and several columns that is most of what
strict parsing and the card-number screen would add to an ingest. The
questions asked of every row are simpler than a regular expression (which
bytes occur, what sits at a fixed position), and numpy answers them over a
column's contiguous data buffer in a few passes. Results are booleans per row,
``False`` for nulls.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

Column = pa.Array | pa.ChunkedArray

# The shape almost every landing timestamp has: YYYY-MM-DDTHH:MM:SSZ (20 bytes), as five
# little-endian 32-bit words per value: which bytes must be digits, what the others are.
_COMMON_ISO = b"0000-00-00T00:00:00Z"
_WORD = np.dtype("<u4")


def _word_masks(shape: bytes) -> tuple[np.ndarray, np.ndarray]:
    digit = np.array([0xFF if b == ord("0") else 0 for b in shape], np.uint8).view(_WORD)
    fixed = np.array([0 if b == ord("0") else b for b in shape], np.uint8).view(_WORD)
    return digit, fixed


_ISO_DIGIT, _ISO_FIXED = _word_masks(_COMMON_ISO)


def _chunks(column: Column) -> Iterator[pa.Array]:
    if isinstance(column, pa.ChunkedArray):
        yield from column.chunks
    else:
        yield column


def _buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a string array: row i is ``data[offsets[i]:offsets[i + 1]]``."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset: array.offset + len(array) + 1]
    data_buffer = array.buffers()[2]
    data = (np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None
            else np.zeros(0, np.uint8))
    return offsets, data


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


def byte_lengths(column: Column) -> np.ndarray:
    """Length in bytes of every value (0 for nulls)."""
    parts = []
    for array in _chunks(column):
        offsets, _ = _buffers(array)
        parts.append(np.where(_valid(array), np.diff(offsets), 0))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _byte_table(allowed: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed, dtype=np.uint8)] = True
    return table


def _marked(offsets: np.ndarray, data: np.ndarray, table: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the bytes marked in ``table`` (256 booleans) and the row of each.

    Marked bytes are expected to be rare (a letter in a number), so their
    positions are mapped to rows instead of summing over every byte.
    """
    positions = np.flatnonzero(table[data[offsets[0]:offsets[-1]]]) + offsets[0]
    return positions, np.searchsorted(offsets, positions, side="right") - 1


_NOT_PLAIN_NUMBER = ~_byte_table(b"0123456789.+-")
_SIGN = _byte_table(b"+-")


def plain_number_text(column: Column) -> np.ndarray:
    """True where a value uses only digits, ``.`` and at most a leading sign.

    With a successful cast to a number this is exactly plain decimal notation:
    no ``1_000``, ``1e3``, ``0x10``, ``inf``, ``+-1``.
    """
    parts = []
    for array in _chunks(column):
        offsets, data = _buffers(array)
        ok = _valid(array) & (np.diff(offsets) > 0)
        _, bad_rows = _marked(offsets, data, _NOT_PLAIN_NUMBER)
        ok[bad_rows] = False
        signs, sign_rows = _marked(offsets, data, _SIGN)
        ok[sign_rows[signs != offsets[sign_rows]]] = False  # a sign that is not first
        parts.append(ok)
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _digit_group_bytes(data: np.ndarray) -> np.ndarray:
    """True for the bytes 0-9, space and dash (comparisons: faster than a table lookup)."""
    return ((data >= ord("0")) & (data <= ord("9"))) | (data == ord(" ")) | (data == ord("-"))


def digit_group_edges(column: Column, min_bytes: int, max_bytes: int) -> np.ndarray:
    """True where a value is ``min_bytes``..``max_bytes`` long and starts and ends with a
    digit, space or dash: a cheap superset of the values that are card numbers (two bytes
    a value, whatever its length)."""
    parts = []
    for array in _chunks(column):
        offsets, data = _buffers(array)
        lengths = np.diff(offsets)
        ok = _valid(array) & (lengths >= min_bytes) & (lengths <= max_bytes)
        rows = np.flatnonzero(ok)
        ok[rows] = (_digit_group_bytes(data[offsets[rows]])
                    & _digit_group_bytes(data[offsets[rows + 1] - 1]))
        parts.append(ok)
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def digit_matrices(array: pa.Array, min_digits: int,
                   max_digits: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, digits)`` per digit count, for the values of ``array`` made only of
    digits, spaces and dashes (at most ``2 * max_digits + 1`` bytes) holding
    ``min_digits``..``max_digits`` digits.

    ``digits`` is a (values, count) int16 matrix of 0-9, separators dropped, read
    from the data buffer without a Python string per value.
    """
    offsets, data = _buffers(array)
    lengths = np.diff(offsets)
    ok = _valid(array) & (lengths >= min_digits) & (lengths <= 2 * max_digits + 1)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return
    flat = data[offsets[0]:offsets[-1]][np.repeat(ok, lengths)]
    ends = np.cumsum(lengths[rows])
    # One running sum gives both facts per value: a digit weighs 1, a separator 0, any
    # other byte more than a value's length (chunk data is < 2 GiB: int32 holds the sums).
    is_digit = (flat >= ord("0")) & (flat <= ord("9"))
    weights = np.where(_digit_group_bytes(flat), is_digit, np.uint8(2 * max_digits + 2))
    running = np.concatenate(([0], np.cumsum(weights, dtype=np.int32)))
    counts = running[ends] - running[ends - lengths[rows]]
    keep = (counts >= min_digits) & (counts <= max_digits)
    if not keep.any():
        return
    digits = flat[is_digit].astype(np.int16) - ord("0")
    digit_starts = np.cumsum(counts) - counts
    for count in np.unique(counts[keep]):
        chosen = np.flatnonzero(keep & (counts == count))
        yield rows[chosen], digits[digit_starts[chosen][:, None] + np.arange(count)]


def common_iso_timestamp(column: Column) -> np.ndarray:
    """True where a value is ``YYYY-MM-DDTHH:MM:SSZ`` (digits where digits belong).

    Such a value cannot hold a card number (no run of digits and single
    separators in it is longer than ten bytes), and only a date check is left.
    Four bytes at a time: a byte is a digit when its high nibble is 3 and
    adding 6 to it does not change that.
    """
    width = len(_COMMON_ISO)
    parts = []
    for array in _chunks(column):
        offsets, data = _buffers(array)
        lengths = np.diff(offsets)
        match = _valid(array) & (lengths == width)
        rows = np.flatnonzero(match)
        flat = data[offsets[0]:offsets[-1]]
        if rows.size < len(match):  # keep the 20-byte values' bytes, back to back
            flat = flat[np.repeat(match, lengths)]
        words = flat.view(_WORD).reshape(rows.size, width // 4)
        ok = np.ones(rows.size, dtype=bool)
        # One word column at a time: numpy is slow over a short last axis.
        for j, (digit, fixed) in enumerate(zip(_ISO_DIGIT, _ISO_FIXED, strict=True)):
            word = words[:, j]
            high, threes = np.uint32(0xF0F0F0F0) & digit, np.uint32(0x30303030) & digit
            if digit:
                ok &= (word & high) == threes
                ok &= ((word + np.uint32(0x06060606)) & high) == threes
            if ~digit:
                ok &= (word & ~digit) == fixed
        match[rows] = ok
        parts.append(match)
    return np.concatenate(parts) if parts else np.zeros(0, bool)
