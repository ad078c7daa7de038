"""Vectorised validation, typing and de-duplication of one batch.

One DuckDB pass parses every field of every row and gives each bad row exactly
one reason: the first rule it breaks, in the order of ``REASONS``. Parsing is
strict, exactly the documented formats (docs/CONTRACTS.md) and nothing a
lenient parser would guess: timestamps are ISO-8601 (date, optional time,
optional ``Z`` or numeric offset within +-14:00; none means UTC) or epoch
seconds; numbers are plain decimals (``12``, ``-3.5``, ``.5``), never
``1_000``, ``1e3``, ``0x10`` or ``inf``. De-duplication then runs on Arrow and
numpy arrays: first valid occurrence of a ``transaction_id`` in the batch wins,
and ids the ledger has seen before are skipped. Every row ends with one status
and is counted; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core import schema
from pipelines.data.ingest import shapes
from pipelines.data.ingest.columns import (
    DEFAULT_TIME_UNIT,
    FEATURE_NUMERIC,
    epoch_micros,
    unit_microseconds,
)
from pipelines.data.ingest.sources import (
    DERIVE_ID_COLUMN,
    FEATURE_KIND_KEY,
    ISO_SHAPED_COLUMN,
    LINE_COLUMN,
    LINE_END_COLUMN,
    READ_REASON_COLUMN,
)
from pipelines.data.ingest.tokenise import card_customer_ids

MAX_AMOUNT = 10_000_000
EARLIEST_TIMESTAMP = "1990-01-01"
LATEST_TIMESTAMP = "2100-01-01"
EPOCH_LIMIT = 4_102_444_800  # 2100-01-01 in epoch seconds; larger numbers are not seconds

# Every reason a row can be quarantined for, in the order rules are checked.
REASONS: tuple[str, ...] = (
    "malformed_row",
    "card_number_in_text",
    "missing_transaction_id",  # blank in a file that has transaction ids
    "missing_timestamp",
    "missing_amount",
    "bad_timestamp",
    "bad_amount",
    "negative_amount",  # zero is a valid amount (card verifications)
    "absurd_amount",
    "bad_currency",
    "bad_card_number",
    "bad_is_cash",
    "bad_is_fraud",
)
# A user's numeric feature holding something else: BAD_FEATURE_REASON + ":" + its column.
BAD_FEATURE_REASON = "bad_feature_value"

STATUS_CURATED = "curated"
STATUS_QUARANTINED = "quarantined"
# Duplicates are skipped, not quarantined: the first copy is already stored.
DUPLICATE_STATUSES = ("duplicate_in_batch", "duplicate_seen_before", "duplicate_quarantined")
# Row statuses are int8 codes while classifying (a million strings would cost more).
STATUSES = (STATUS_CURATED, STATUS_QUARANTINED, *DUPLICATE_STATUSES)
_CODE = {name: np.int8(code) for code, name in enumerate(STATUSES)}

_TRUE = "'true', 't', '1', 'yes', 'y'"
_FALSE = "'false', 'f', '0', 'no', 'n'"

# ISO-8601: a date, optionally a time, optionally Z or an offset within +-14:00 (RE2).
_OFFSET = r"(?:Z|[+-](?:(?:0[0-9]|1[0-3])(?::?[0-5][0-9])?|14(?::?00)?))"
ISO_TIMESTAMP = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    rf"(?:[T ][0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:\.[0-9]{{1,9}})?)?{_OFFSET}?)?"
)
# Numbers: DuckDB's cast also reads 1_000, 1e3 and +-1; ``shapes.plain_number_text``
# (numpy, computed before the query as ``_plain_<column>``) allows plain decimals only.
_PLAIN_CHECKED = ("amount", "timestamp", "is_fraud")


# Text is trimmed (and upper/lower-cased) in Arrow, which is several times faster than
# DuckDB's trim; DuckDB does what Arrow cannot do row by row: try_cast without failing.
# Only typed columns and the reason leave DuckDB; text stays in Arrow (no extra copies).
# ``{epoch_from}``/``{epoch_to}``: the numbers read as times (from 0 for epoch seconds; with
# a time origin, relative times may be negative), in units; ``{origin_us}``: that origin in
# epoch micros; ``{unit_us}``: micros per unit (``columns.TIME_UNITS``).
_PARSE = f"""
WITH typed AS (
    SELECT
        _row, _read_reason, _card_bad, _plain_timestamp, _derive_id,
        nullif(transaction_id, '') AS transaction_id,
        nullif(timestamp, '') AS timestamp_text,
        nullif(amount, '') AS amount_text,
        -- The usual shape (checked in numpy) skips the regular expression.
        CASE WHEN _common_iso OR regexp_full_match(timestamp, '{ISO_TIMESTAMP}')
             THEN try_cast(timestamp AS TIMESTAMPTZ) END AS iso_ts,
        CASE WHEN _plain_amount THEN try_cast(amount AS DOUBLE) END AS amount,
        nullif(currency, '') AS currency,
        nullif(is_cash, '') AS is_cash_text,
        CASE WHEN is_cash IN ({_TRUE}) THEN true
             WHEN is_cash IN ({_FALSE}) THEN false END AS is_cash,
        nullif(is_fraud, '') AS is_fraud_text,
        CASE WHEN is_fraud = '0' THEN 0::TINYINT WHEN is_fraud = '1' THEN 1::TINYINT
             WHEN _plain_is_fraud AND try_cast(is_fraud AS DOUBLE) IN (0, 1)
             THEN try_cast(is_fraud AS DOUBLE)::TINYINT END AS is_fraud{{feature_typed}}
    FROM raw
),
offsets AS (
    -- A whole number of units is multiplied exactly as an integer (3 hours is exactly
    -- 10,800,000,000 us); only a fraction (1.5 hours) is rounded to the microsecond.
    SELECT *, CASE
        WHEN ts_number = trunc(ts_number) AND abs(ts_number) <= {{epoch_to}}
            THEN try_cast(ts_number AS BIGINT) * {{unit_us}}::BIGINT
        ELSE try_cast(round(ts_number * {{unit_us}}) AS BIGINT)
    END AS offset_us
    FROM (SELECT *, CASE WHEN _plain_timestamp AND iso_ts IS NULL
                         THEN try_cast(timestamp_text AS DOUBLE) END AS ts_number
          FROM typed)
),
timed AS (
    -- CASE evaluates the epoch branch only for rows that are not ISO-8601 text.
    SELECT *, CASE
        WHEN iso_ts IS NOT NULL THEN iso_ts
        WHEN ts_number BETWEEN {{epoch_from}} AND {{epoch_to}}
            THEN make_timestamp({{origin_us}} + offset_us)::TIMESTAMPTZ
    END AS ts
    FROM offsets
)
SELECT _row, ts AS timestamp, amount, is_cash, is_fraud{{feature_values}},
    CASE
        WHEN _read_reason IS NOT NULL THEN _read_reason
        WHEN transaction_id IS NULL AND NOT _derive_id THEN 'missing_transaction_id'
        WHEN timestamp_text IS NULL THEN 'missing_timestamp'
        WHEN amount_text IS NULL THEN 'missing_amount'
        WHEN ts IS NULL OR ts < TIMESTAMPTZ '{EARLIEST_TIMESTAMP}'
             OR ts >= TIMESTAMPTZ '{LATEST_TIMESTAMP}' THEN 'bad_timestamp'
        WHEN amount IS NULL OR NOT isfinite(amount) THEN 'bad_amount'
        WHEN amount < 0 THEN 'negative_amount'
        WHEN amount > {MAX_AMOUNT} THEN 'absurd_amount'
        WHEN currency IS NOT NULL AND NOT regexp_full_match(currency, '[A-Z]{{3}}')
             THEN 'bad_currency'
        WHEN _card_bad THEN 'bad_card_number'
        WHEN is_cash_text IS NOT NULL AND is_cash IS NULL THEN 'bad_is_cash'
        WHEN is_fraud_text IS NOT NULL AND is_fraud IS NULL THEN 'bad_is_fraud'{{feature_reasons}}
    END AS reason
FROM timed
"""

_PARSE_INPUTS = (
    "transaction_id", "timestamp", "amount", "currency", "is_cash", "is_fraud",
    "_read_reason", "_card_bad", "_derive_id", "_row", "_common_iso",
    *(f"_plain_{name}" for name in _PLAIN_CHECKED),
)
# Text columns stored in curated, with how each is normalised.
_UPPER = ("currency", "country")
_LOWER = ("is_cash",)
_TEXT = ("transaction_id", "customer_id", "terminal_id", "timestamp", "amount", "currency",
         "merchant_category", "channel", "country", "is_cash", "is_fraud", "fraud_scenario")
QUARANTINE_TEXT_COLUMNS = tuple(c for c in schema.LANDING_COLUMNS if c != "card_number")


@dataclass(frozen=True)
class CardColumns:
    """Per-row card results as indices into the tokeniser's lookup of distinct values.

    Tokens stay dictionary-encoded (one string per distinct card, an int32 per
    row), so a million rows never copy a million 64-character tokens.
    """

    indices: pa.Array  # int32 row -> lookup row; null where the row has no card
    lookup: pa.Table  # card_raw, card_ok, card_token, card_masked

    def _lookup(self, name: str) -> pa.Array:
        # Plain arrays: a chunked input would make DictionaryArray.from_arrays copy
        # element by element in Python (seconds per million rows).
        return self.lookup.column(name).combine_chunks()

    @property
    def bad(self) -> pa.Array:
        """True where a card number is present but invalid."""
        ok = pc.take(self._lookup("card_ok"), self.indices)
        return pc.fill_null(pc.invert(ok), False)

    def _valid_indices(self) -> pa.Array:
        # Rows with an invalid card never reach curated: their index becomes null, and the
        # dictionaries hold no nulls (Parquet cannot write a null inside a dictionary).
        ok = pc.take(self._lookup("card_ok"), self.indices)
        return pc.if_else(ok, self.indices, pa.scalar(None, pa.int32()))

    def tokens(self) -> pa.DictionaryArray:
        values = pc.fill_null(self._lookup("card_token"), "")
        return pa.DictionaryArray.from_arrays(self._valid_indices(), values)

    def customer_ids(self) -> pa.DictionaryArray:
        """The id the per-card features key on when a row has no customer id (valid cards)."""
        values = card_customer_ids(pc.fill_null(self._lookup("card_token"), ""))
        return pa.DictionaryArray.from_arrays(self._valid_indices(), values)

    def valid_masked(self) -> pa.DictionaryArray:
        """Masked numbers of valid cards only (invalid ones never reach curated)."""
        return pa.DictionaryArray.from_arrays(self._valid_indices(),
                                              self._lookup("card_masked"))

    def masked_rows(self, rows: pa.Array) -> pa.Array:
        """Masked form of whatever was given (valid or not) for the selected rows."""
        return pc.take(self._lookup("card_masked"), pc.take(self.indices, rows))


@dataclass(frozen=True)
class Classified:
    """The outcome of one batch: tables to write, ledger keys, and counts."""

    curated: pa.Table
    quarantine: pa.Table
    quarantine_keys: pa.Array
    counts: list[tuple[int, str, str, int]]  # (file index, status, reason, rows)
    # Every input row's id, given or derived (DERIVED_ID_PREFIX), in input order.
    transaction_ids: pa.ChunkedArray


def card_columns(card_values: pa.ChunkedArray, lookup: pa.Table) -> CardColumns:
    """Map every row to its row in the per-distinct-card ``lookup``."""
    encoded = pc.dictionary_encode(card_values.combine_chunks())
    order = pc.index_in(encoded.dictionary, lookup.column("card_raw")).cast(pa.int32())
    return CardColumns(indices=pc.take(order, encoded.indices), lookup=lookup)


def normalise_text(raw: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Trimmed text columns; codes upper-cased, booleans lower-cased; blank becomes null."""
    text = {}
    for name in _TEXT:
        column = pc.utf8_trim_whitespace(raw.column(name))
        if name in _UPPER:
            column = pc.utf8_upper(column)
        elif name in _LOWER:
            column = pc.utf8_lower(column)
        text[name] = column
    return text


@dataclass(frozen=True)
class UserFeature:
    """A column the column map declared a model feature, as the raw table carries it."""

    name: str  # its own name, kept in curated data
    kind: str  # columns.FEATURE_NUMERIC or columns.FEATURE_CATEGORICAL
    alias: str  # its name inside the queries (the user's name may be anything)

    @property
    def numeric(self) -> bool:
        return self.kind == FEATURE_NUMERIC

    @property
    def reason(self) -> str:
        """Quarantine reason for a value that is not a plain number: names the column."""
        return f"{BAD_FEATURE_REASON}:{self.name}"


def user_features(raw: pa.Table) -> list[UserFeature]:
    """The raw table's user feature columns (marked in their field metadata)."""
    return [UserFeature(field.name, field.metadata[FEATURE_KIND_KEY].decode(), f"_uf{i}")
            for i, field in enumerate(f for f in raw.schema
                                      if f.metadata and FEATURE_KIND_KEY in f.metadata)]


def _shape_columns(raw: pa.Table, text: dict[str, pa.ChunkedArray]) -> dict[str, pa.Array]:
    """``_common_iso`` and ``_plain_<column>``: the numpy checks the query relies on."""
    iso = raw.column(ISO_SHAPED_COLUMN)  # from the raw text: trimming cannot create the shape
    shape = {"_common_iso": iso}
    for name in _PLAIN_CHECKED:
        if name == "timestamp":  # only times that are not ISO text may be epoch numbers
            plain = np.zeros(raw.num_rows, dtype=bool)
            rows = np.flatnonzero(~iso.to_numpy())
            plain[rows] = shapes.plain_number_text(text[name].take(pa.array(rows)))
        else:
            plain = shapes.plain_number_text(text[name])
        shape[f"_plain_{name}"] = pa.array(plain)
    return shape


def _parse_sql(time_origin: datetime | None, features: list[UserFeature],
               time_unit: str = DEFAULT_TIME_UNIT) -> str:
    """The parse query; with ``time_origin``, numbers are ``time_unit``s from it (maybe
    negative).

    Each numeric user feature adds its typed value and, after every built-in
    rule, its own reason; names reach the SQL only as quoted reason text.
    """
    numeric = [f for f in features if f.numeric]
    typed = "".join(
        f",\n        nullif({f.alias}, '') AS {f.alias}_text, "
        f"CASE WHEN _plain{f.alias} THEN try_cast({f.alias} AS DOUBLE) END AS {f.alias}_value"
        for f in numeric)
    reasons = "".join(
        f"\n        WHEN {f.alias}_text IS NOT NULL AND ({f.alias}_value IS NULL "
        f"OR NOT isfinite({f.alias}_value)) THEN '{f.reason.replace(chr(39), chr(39) * 2)}'"
        for f in numeric)
    sql = (_PARSE.replace("{feature_typed}", typed).replace("{feature_reasons}", reasons)
           .replace("{feature_values}", "".join(f", {f.alias}_value" for f in numeric)))
    unit_us = unit_microseconds(time_unit)
    epoch_to = EPOCH_LIMIT * 1_000_000 // unit_us  # the same span in any unit: no overflow
    sql = sql.replace("{unit_us}", str(unit_us)).replace("{epoch_to}", str(epoch_to))
    if time_origin is None:
        return sql.replace("{epoch_from}", "0").replace("{origin_us}", "0")
    origin_us = epoch_micros(time_origin)
    return (sql.replace("{epoch_from}", str(-epoch_to))
            .replace("{origin_us}", f"{origin_us}::BIGINT"))


def _parse(raw: pa.Table, text: dict[str, pa.ChunkedArray], cards: CardColumns,
           time_origin: datetime | None, features: list[UserFeature],
           time_unit: str) -> pa.Table:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        numeric = [f.alias for f in features if f.numeric]
        inputs = pa.table({**text, "_read_reason": raw.column(READ_REASON_COLUMN),
                           "_card_bad": cards.bad, "_derive_id": raw.column(DERIVE_ID_COLUMN),
                           "_row": pa.array(np.arange(raw.num_rows), pa.int64()),
                           **_shape_columns(raw, text),
                           **{f"_plain{alias}": pa.array(shapes.plain_number_text(text[alias]))
                              for alias in numeric}})
        columns = [*_PARSE_INPUTS, *numeric, *(f"_plain{alias}" for alias in numeric)]
        con.register("raw", inputs.select(columns))
        # DuckDB 2.0: .sql(...).to_arrow_table() avoids the extra copy execute() makes.
        parsed = con.sql(_parse_sql(time_origin, features, time_unit)).to_arrow_table()
    finally:
        con.close()
    return _in_row_order(parsed)


# A transaction without an id in the file is identified by what describes it: its instant,
# amount, parties, card (as its token, never the number) and context; not its label,
# which feedback may correct later. The n-th repeat of the same content in one file gets
# "-n" (n >= 1), so identical rows stay distinct and the same file always gives the
# same ids. Ids: DERIVED_ID_PREFIX + 32 hex digits of SHA-256 [+ "-n"].
DERIVED_ID_PREFIX = "drv-"
_IDENTITY_TEXT = ("customer_id", "terminal_id", "currency", "merchant_category", "channel",
                  "country", "is_cash")
_DERIVE = f"""
SELECT _row, '{DERIVED_ID_PREFIX}' || left(sha256(content), 32)
       || CASE WHEN repeat > 0 THEN '-' || repeat ELSE '' END AS id
FROM (
    SELECT _row, content,
           row_number() OVER (PARTITION BY _file, content ORDER BY _row) - 1 AS repeat
    FROM (
        SELECT _row, _file, concat_ws(chr(31),
            coalesce(epoch_us(timestamp)::VARCHAR, ''), coalesce(amount::VARCHAR, ''),
            {", ".join(f"coalesce({name}, '')" for name in _IDENTITY_TEXT)},
            coalesce(card_token, ''){{features}}) AS content
        FROM derive
    )
)
"""


def _transaction_ids(raw: pa.Table, text: dict[str, pa.ChunkedArray], parsed: pa.Table,
                     cards: CardColumns, features: list[UserFeature]) -> pa.ChunkedArray:
    """The file's transaction ids, and derived ones for rows of files that have none.

    The user's feature values (as given) are part of a row's content: in data
    whose signal is anonymised columns they are what tells transactions apart.
    """
    given = text["transaction_id"]
    derive = raw.column(DERIVE_ID_COLUMN)
    if not pc.any(derive).as_py():
        return given
    rows = np.flatnonzero(derive.to_numpy(zero_copy_only=False))
    take = pa.array(rows)
    inputs = pa.table({
        "_row": take, "_file": raw.column("_file").take(take),
        "timestamp": parsed.column("timestamp").take(take),
        "amount": parsed.column("amount").take(take),
        **{name: text[name].take(take) for name in _IDENTITY_TEXT},
        "card_token": cards.tokens().take(take).cast(pa.string()),
        **{f.alias: text[f.alias].take(take) for f in features},
    })
    sql = _DERIVE.replace("{features}", "".join(f", coalesce({f.alias}, '')" for f in features))
    con = duckdb.connect()
    try:
        con.register("derive", inputs)
        derived = _in_row_order(con.sql(sql).to_arrow_table()).column("id")
    finally:
        con.close()
    mask = np.zeros(raw.num_rows, dtype=bool)
    mask[rows] = True
    return pa.chunked_array([pc.replace_with_mask(given.combine_chunks(), pa.array(mask),
                                                  derived.combine_chunks())])


def _in_row_order(parsed: pa.Table) -> pa.Table:
    """Put DuckDB's output back in input order: parallel scans of many chunks reorder rows."""
    rows = parsed.column("_row").to_numpy()
    if rows.size > 1 and not np.all(rows[1:] > rows[:-1]):
        parsed = parsed.take(pa.array(np.argsort(rows, kind="stable")))
    return parsed


def _first_occurrences(ids: pa.ChunkedArray, candidates: np.ndarray) -> np.ndarray:
    """True for the first candidate row carrying each id (in row order).

    Ids are hashed to integer codes once; ``np.unique`` on the candidates' codes
    then finds each code's first position without copying any strings.
    """
    first = np.zeros(len(candidates), dtype=bool)
    positions = np.flatnonzero(candidates)
    if positions.size == 0:
        return first
    encoded = pc.dictionary_encode(ids.combine_chunks()).indices
    codes = pc.fill_null(encoded, -1).to_numpy(zero_copy_only=False)
    _, first_index = np.unique(codes[positions], return_index=True)
    first[positions[first_index]] = True
    return first


def _fingerprints(raw: pa.Table, cards: CardColumns, rows: np.ndarray,
                  file_keys: list[str]) -> list[str]:
    """Identify rejected rows by file content, line and values (card masked, never clear).

    ``file_keys[i]`` identifies file ``i`` by what it holds (its SHA-256), not
    where it was: re-ingesting the same file, from any path, finds the row
    already quarantined instead of quarantining it twice. Rejected rows are
    few, so plain Python is fine.
    """
    subset = raw.select([*QUARANTINE_TEXT_COLUMNS, LINE_COLUMN, "_file"]).take(pa.array(rows))
    masked_rows = cards.masked_rows(pa.array(rows, pa.int64())).to_pylist()
    keys = []
    for record, mask in zip(subset.to_pylist(), masked_rows, strict=True):
        values = [file_keys[record["_file"]], str(record[LINE_COLUMN]), mask or ""]
        values += [record[c] or "" for c in QUARANTINE_TEXT_COLUMNS]
        keys.append(hashlib.sha256("\x1f".join(values).encode()).hexdigest())
    return keys


def classify(
    raw: pa.Table,
    source_files: list[str],
    cards: CardColumns,
    seen_ids: pa.Table,
    seen_quarantine: pa.Table,
    ingestion_id: str,
    ingestion_day: str,
    file_keys: list[str] | None = None,
    time_origin: datetime | None = None,
    time_unit: str = DEFAULT_TIME_UNIT,
) -> Classified:
    """Validate, type and de-duplicate ``raw`` (text columns plus ``_file``, ``_line``).

    ``source_files[i]`` names file ``_file == i`` and ``file_keys[i]`` identifies
    its content (default: its name, for sources without a file such as a
    stream); ``seen_ids`` and ``seen_quarantine`` are the ledger's keys (column
    ``key``) from earlier runs. ``time_origin``: numeric times count ``time_unit``s
    (``columns.TIME_UNITS``) from it (default: they are epoch seconds).
    """
    features = user_features(raw)
    text = normalise_text(raw)
    text.update({f.alias: pc.utf8_trim_whitespace(raw.column(f.name)) for f in features})
    parsed = _parse(raw, text, cards, time_origin, features, time_unit)
    valid = pc.is_null(parsed.column("reason")).to_numpy(zero_copy_only=False)
    ids = _transaction_ids(raw, text, parsed, cards, features)
    seen = pc.fill_null(pc.is_in(ids, value_set=seen_ids.column("key")), False)
    seen = seen.to_numpy(zero_copy_only=False) & valid
    first = _first_occurrences(ids, valid & ~seen)
    rejected = np.flatnonzero(~valid)
    keys = _fingerprints(raw, cards, rejected, file_keys or source_files)
    already = pc.is_in(pa.array(keys, pa.string()), value_set=seen_quarantine.column("key"))
    already = already.to_numpy(zero_copy_only=False).astype(bool)

    status = np.full(raw.num_rows, _CODE[STATUS_CURATED], dtype=np.int8)
    status[valid & seen] = _CODE["duplicate_seen_before"]
    status[valid & ~seen & ~first] = _CODE["duplicate_in_batch"]
    status[rejected] = np.where(already, _CODE["duplicate_quarantined"],
                                _CODE[STATUS_QUARANTINED])

    curated_mask = pa.array(status == _CODE[STATUS_CURATED])
    quarantine_rows = rejected[~already]
    return Classified(
        curated=_curated(raw, {**text, "transaction_id": ids}, parsed, cards, curated_mask,
                         source_files, ingestion_id, features),
        quarantine=_quarantine(raw, parsed, cards, quarantine_rows, source_files,
                               ingestion_id, ingestion_day),
        quarantine_keys=pa.array([k for k, a in zip(keys, already, strict=True) if not a],
                                 pa.string()),
        counts=_counts(raw.column("_file"), status, parsed.column("reason")),
        transaction_ids=ids,
    )


def _source_file_column(file_index: pa.ChunkedArray, source_files: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        file_index.combine_chunks(), pa.array(source_files, pa.string())
    )


# CURATED_SCHEMA with repetitive text dictionary-encoded in memory. Files are written
# without the Arrow schema, so every reader sees plain strings: CURATED_SCHEMA exactly.
_DICTIONARY_COLUMNS = ("card_token", "card_masked", "source_file", "ingestion_id")
CURATED_WRITE_SCHEMA = pa.schema(
    [
        f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in _DICTIONARY_COLUMNS
        else f
        for f in schema.CURATED_SCHEMA
    ]
)


def _blank_to_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if len(column) == 0 or (pc.min(pc.binary_length(column)).as_py() or 0) > 0:
        return column  # no blank value: skip the copy (one pass over the offsets)
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _curated(raw, text, parsed, cards, mask, source_files, ingestion_id, features) -> pa.Table:
    """Curated rows in ``CURATED_WRITE_SCHEMA`` then the user's features, grouped by day."""
    n = raw.num_rows
    columns = {
        "transaction_id": text["transaction_id"],
        **{name: parsed.column(name) for name in ("timestamp", "amount", "is_cash", "is_fraud")},
        "card_token": cards.tokens(),
        "card_masked": cards.valid_masked(),
        "source_file": _source_file_column(raw.column("_file"), source_files),
        "ingestion_id": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, dtype=np.int32)), pa.array([ingestion_id])
        ),
    }
    table = pa.table(columns).filter(mask)
    # Optional text: filtered first, so blank -> null runs on curated rows only.
    table = table.append_column("customer_id", _customer_ids(text["customer_id"], cards, mask))
    for name in ("terminal_id", "currency", "merchant_category", "channel", "country",
                 "fraud_scenario"):
        table = table.append_column(name, _blank_to_null(text[name].filter(mask)))
    day = pc.cast(parsed.column("timestamp").filter(mask), pa.date32())  # timestamps are UTC
    table = table.append_column("dt", pc.cast(day, pa.string()))
    table = table.select(CURATED_WRITE_SCHEMA.names).cast(CURATED_WRITE_SCHEMA)
    for feature in features:  # numeric as float64, categorical as text (blank: missing)
        values = (parsed.column(f"{feature.alias}_value") if feature.numeric
                  else _blank_to_null(text[feature.alias]))
        table = table.append_column(feature.name, values.filter(mask))
    return _sorted_by_day(table)


def _customer_ids(given: pa.ChunkedArray, cards: CardColumns,
                  mask: pa.Array) -> pa.ChunkedArray:
    """The curated rows' customer ids: the one given, else the card's (``card_customer_ids``).

    Decided row by row, not per file: the stream meets records one micro-batch at
    a time, whose make-up must not change a record's key, or its features would
    differ from batch. A row with neither stays null. Derived ids are not part of
    ``_transaction_ids``' content (the card token already is), so files ingested
    before this rule keep their ids.
    """
    customer = _blank_to_null(given.filter(mask))
    if customer.null_count == 0:
        return customer
    derived = cards.customer_ids().filter(mask).cast(pa.string())
    return pc.coalesce(customer.combine_chunks(), derived)


def _sorted_by_day(table: pa.Table) -> pa.Table:
    """Group rows by ``dt`` (stable, so row order is kept within a day); skip if already so."""
    dt = table.column("dt")
    if table.num_rows < 2:
        return table
    in_order = pc.all(pc.greater_equal(dt.slice(1), dt.slice(0, table.num_rows - 1))).as_py()
    if in_order:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[("dt", "ascending")]))


def _quarantine(raw, parsed, cards, rows, source_files, ingestion_id, day) -> pa.Table:
    """Rejected rows with their original text (card masked), reason, file and line."""
    take = pa.array(rows, pa.int64())
    subset = raw.select(list(QUARANTINE_TEXT_COLUMNS)).take(take)
    n = len(rows)
    columns = {name: subset.column(name) for name in QUARANTINE_TEXT_COLUMNS}
    columns.update(
        card_masked=cards.masked_rows(take),
        reason=parsed.column("reason").take(take),
        source_file=_source_file_column(raw.column("_file").take(take), source_files),
        source_line=raw.column(LINE_COLUMN).take(take),
        source_line_end=raw.column(LINE_END_COLUMN).take(take),
        ingestion_id=pa.repeat(pa.scalar(ingestion_id), n),
        dt=pa.repeat(pa.scalar(day), n),
    )
    return pa.table(columns).cast(schema.QUARANTINE_SCHEMA)


def _counts(file_index, status: np.ndarray, reason) -> list[tuple[int, str, str, int]]:
    table = pa.table({"file": file_index, "status": status, "reason": reason})
    grouped = table.group_by(["file", "status", "reason"]).aggregate([("status", "count")])
    return sorted(
        (r["file"], STATUSES[r["status"]], r["reason"] or "", r["status_count"])
        for r in grouped.to_pylist()
    )
