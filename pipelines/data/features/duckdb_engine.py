"""Single-node engine: the feature definitions compiled to DuckDB SQL.

:func:`compile_sql` writes the whole feature set as one readable query: every
:class:`~pipelines.data.features.definitions.Aggregate` is a window function
over a named ``WINDOW`` with a ``RANGE BETWEEN INTERVAL ... PRECEDING AND
INTERVAL ... PRECEDING`` frame on the UTC timestamp (``fraudops features
--print-sql``). What runs (:func:`prepare_query`) is the same base and feature
SQL with the frames computed in between by :mod:`~pipelines.data.features.frames`
(one sort per entity and running totals), because DuckDB's RANGE frames grow
with the largest entity: 17 s for 1.75M rows, 382 s when one terminal and one
customer hold half of them. Late labels (explicit ``label_known_at`` after
``timestamp + delay``) are subtracted by a range join that only touches those
few rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.features import frames
from pipelines.data.features.definitions import (
    AGGREGATES,
    DEFAULT_LABEL_DELAY_DAYS,
    FEATURE_COLUMNS,
    FEATURES,
    ID_COLUMNS,
    LABEL_COLUMN,
    LABELS_COLUMNS,
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    PARTITION_COLUMN,
    Aggregate,
    label_delay_micros,
)

# Optional inputs the features read; a missing one is treated as all-null.
OPTIONAL_INPUTS: dict[str, str] = {
    "channel": "VARCHAR",
    "country": "VARCHAR",
    "is_cash": "BOOLEAN",
    LABEL_COLUMN: "TINYINT",
}
# The columns the base query reads. Customer and terminal ids may be null (a file
# without them): the features needing them are then left out (definitions.FeatureLayout).
BASE_INPUTS: tuple[str, ...] = ("transaction_id", "timestamp", "customer_id", "terminal_id",
                                "amount")
NOT_NULL_INPUTS: tuple[str, ...] = ("transaction_id", "timestamp", "amount")
TRANSACTIONS_VIEW = "transactions"
LABELS_VIEW = "fraudops_feature_labels"
FRAMES_VIEW = "fraudops_feature_frames"
# Stage 1 also hashes each transaction id: equal hashes are the only way to a duplicate.
ID_HASH_COLUMN = "fraudops_transaction_id_hash"
DEFAULT_THREADS = 2
DEFAULT_MEMORY_LIMIT = "3GB"


# --- SQL compilation ----------------------------------------------------------------
def interval_sql(micros: int) -> str:
    """``INTERVAL '7 days 1 microsecond'``: an exact, readable frame offset."""
    days, rest = divmod(micros, MICROS_PER_DAY)
    hours, rest = divmod(rest, MICROS_PER_HOUR)
    parts = [
        f"{value} {unit}{'' if value == 1 else 's'}"
        for value, unit in ((days, "day"), (hours, "hour"), (rest, "microsecond"))
        if value
    ]
    return f"INTERVAL '{' '.join(parts) or '0 microseconds'}'"


def window_name(aggregate: Aggregate) -> str:
    """Name of the ``WINDOW`` clause an aggregate runs over, e.g. ``terminal_id_7d_delayed``."""
    span = "history" if aggregate.window is None else aggregate.window.name
    suffix = "_delayed" if aggregate.lag == "label_delay" else ""
    return f"{'_'.join(aggregate.entity)}_{span}{suffix}"


def window_sql(aggregate: Aggregate, delay_micros: int) -> str:
    start, end = aggregate.frame_micros(delay_micros)
    lower = "UNBOUNDED PRECEDING" if start is None else f"{interval_sql(start)} PRECEDING"
    return (
        f"PARTITION BY {', '.join(aggregate.entity)} ORDER BY ts_utc "
        f"RANGE BETWEEN {lower} AND {interval_sql(end)} PRECEDING"
    )


def aggregate_call(aggregate: Aggregate, row_filter: str | None = None) -> str:
    """``count(*)``/``sum(x)``/``max(x)`` with the definition's filter; sums of nothing are 0."""
    conditions = [c for c in (aggregate.filter, row_filter) if c]
    filter_sql = f" FILTER (WHERE {' AND '.join(conditions)})" if conditions else ""
    argument = "*" if aggregate.function == "count" else aggregate.value
    return f"{aggregate.function}({argument}){filter_sql}"


def _windowed_select(delay_micros: int) -> str:
    windows: dict[str, str] = {}
    columns = []
    for a in AGGREGATES:
        windows.setdefault(window_name(a), window_sql(a, delay_micros))
        call = f"{aggregate_call(a)} OVER {window_name(a)}"
        if a.function == "sum":
            # An empty frame sums to 0, not NULL; DOUBLE whatever the value type.
            call = f"CAST(coalesce({call}, 0) AS DOUBLE)"
        columns.append(f"        {call} AS {a.name}")
    window_clauses = ",\n".join(f"        {name} AS ({sql})" for name, sql in windows.items())
    return (
        "    SELECT base.*,\n"
        + ",\n".join(columns)
        + "\n    FROM base\n    WINDOW\n"
        + window_clauses
    )


def _late_label_ctes(delay_micros: int) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """CTEs subtracting labels that were not yet known at t, grouped by entity.

    A row in ``[t - delay - w, t - delay)`` whose label became known after t must
    have ``label_known_us > ts_us + delay``: only those "late" rows are joined.
    """
    by_entity: dict[tuple[str, ...], list[Aggregate]] = {}
    for a in AGGREGATES:
        if a.labels_known_at_t:
            by_entity.setdefault(a.entity, []).append(a)
    ctes: list[str] = []
    names: list[tuple[str, list[str]]] = []
    for index, (entity, aggregates) in enumerate(by_entity.items()):
        late, corr = f"late_labels_{index}", f"late_label_corrections_{index}"
        frames = [a.frame_micros(delay_micros) for a in aggregates]
        widest = max(start for start, _ in frames if start is not None)
        nearest = min(end for _, end in frames)
        keys = ", ".join(entity)
        flags = ", ".join(
            f"({a.filter or 'TRUE'}) AS keep_{a.name}"
            + (f", {a.value} AS value_{a.name}" if a.value else "")
            for a in aggregates
        )
        ctes.append(
            f"{late} AS (\n    SELECT {keys}, ts_us, label_known_us, {flags}\n    FROM base\n"
            f"    WHERE label_known_us > ts_us + {delay_micros}\n)"
        )
        sums = []
        for a, (start, end) in zip(aggregates, frames, strict=True):
            in_frame = f"late.ts_us BETWEEN cur.ts_us - {start} AND cur.ts_us - {end}"
            argument = "*" if a.function == "count" else f"late.value_{a.name}"
            sums.append(
                f"        {a.function}({argument}) FILTER (WHERE late.keep_{a.name} AND {in_frame})"
                f" AS {a.name}"
            )
        join_keys = " AND ".join(f"late.{k} IS NOT DISTINCT FROM cur.{k}" for k in entity)
        ctes.append(
            f"{corr} AS (\n    SELECT cur.transaction_id,\n"
            + ",\n".join(sums)
            + f"\n    FROM base AS cur JOIN {late} AS late\n"
            f"      ON {join_keys}\n"
            f"     AND late.label_known_us > cur.ts_us\n"
            f"     AND late.ts_us BETWEEN cur.ts_us - {widest} AND cur.ts_us - {nearest}\n"
            f"    GROUP BY cur.transaction_id\n)"
        )
        names.append((corr, [a.name for a in aggregates]))
    return ctes, names


def _base_cte(
    delay: int, with_labels: bool, missing: set[str], source: str, labels_source: str
) -> str:
    """``base``: the base columns every engine derives (definitions module docstring)."""

    def column(name: str) -> str:
        return f"CAST(NULL AS {OPTIONAL_INPUTS[name]})" if name in missing else f"t.{name}"

    curated_label = column(LABEL_COLUMN)
    label = f"coalesce(l.is_fraud, {curated_label})" if with_labels else curated_label
    known = (
        f"coalesce(epoch_us(l.label_known_at), epoch_us(t.timestamp) + {delay})"
        if with_labels
        else f"epoch_us(t.timestamp) + {delay}"
    )
    join = f"\n    LEFT JOIN {labels_source} AS l USING (transaction_id)" if with_labels else ""
    return (
        "base AS (\n    SELECT t.transaction_id, t.timestamp, t.customer_id, t.terminal_id,\n"
        f"        CAST(t.amount AS DOUBLE) AS amount, {column('channel')} AS channel,\n"
        f"        {column('country')} AS country, {column('is_cash')} AS is_cash,\n"
        "        epoch_us(t.timestamp) AS ts_us,\n"
        "        make_timestamp(epoch_us(t.timestamp)) AS ts_utc,\n"
        f"        CAST({label} AS TINYINT) AS is_fraud,\n"
        f"        CAST(coalesce({label}, 0) AS INTEGER) AS fraud_label,\n"
        f"        {known} AS label_known_us\n"
        f"    FROM {source} AS t{join}\n)"
    )


def _features_query(ctes: list[str], delay: int, with_labels: bool, ordered: bool) -> str:
    """Late-label corrections and the features over ``windowed`` (base columns + aggregates)."""
    ctes = list(ctes)
    aggregates_from = "windowed"
    if with_labels:
        late_ctes, corrections = _late_label_ctes(delay)
        ctes += late_ctes
        replaced = [f"w.{n} - coalesce({c}.{n}, 0) AS {n}" for c, ns in corrections for n in ns]
        joins = "".join(f"\n    LEFT JOIN {c} USING (transaction_id)" for c, _ in corrections)
        ctes.append(
            f"aggregates AS (\n    SELECT w.* REPLACE ({', '.join(replaced)})\n"
            f"    FROM windowed AS w{joins}\n)"
        )
        aggregates_from = "aggregates"
    outputs = [*ID_COLUMNS, LABEL_COLUMN]
    features = ",\n".join(f"    CAST({f.expression} AS DOUBLE) AS {f.name}" for f in FEATURES)
    return (
        "WITH\n" + ",\n".join(ctes) + f"\nSELECT {', '.join(outputs)},\n"
        f"    strftime(ts_utc, '%Y-%m-%d') AS {PARTITION_COLUMN},\n"
        + features
        + f"\nFROM {aggregates_from}"
        + ("\nORDER BY ts_us, transaction_id" if ordered else "")
    )


def compile_sql(
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    *,
    with_labels: bool = False,
    missing_columns: Iterable[str] = (),
    source: str = TRANSACTIONS_VIEW,
    labels_source: str = LABELS_VIEW,
    ordered: bool = True,
) -> str:
    """The whole feature set as one query with SQL window frames: the readable form.

    This is what ``fraudops features --print-sql`` shows and what tests check the
    fast path against. It is exact but slow on large or skewed entities (RANGE
    frames are evaluated partition by partition), so :func:`prepare_query` runs
    the same base and feature SQL with the frames computed by
    :mod:`~pipelines.data.features.frames` instead.
    ``missing_columns`` are optional inputs absent from ``source`` (read as NULL).
    ``ordered`` sorts the result by (timestamp, transaction_id); a partitioned
    write does not keep row order anyway, so the table build skips the sort.
    """
    delay = label_delay_micros(label_delay_days)
    base = _base_cte(delay, with_labels, set(missing_columns), source, labels_source)
    windowed = f"windowed AS (\n{_windowed_select(delay)}\n)"
    return _features_query([base, windowed], delay, with_labels, ordered)


def compile_inputs_sql(
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    *,
    with_labels: bool = False,
    missing_columns: Iterable[str] = (),
    source: str = TRANSACTIONS_VIEW,
    labels_source: str = LABELS_VIEW,
) -> str:
    """Stage 1 of the fast path: the base columns plus every aggregate's value and filter."""
    delay = label_delay_micros(label_delay_days)
    base = _base_cte(delay, with_labels, set(missing_columns), source, labels_source)
    inputs = "".join(
        f",\n    {expression} AS {name}"
        for expression, name in frames.input_columns(AGGREGATES).items()
    )
    id_hash = f",\n    hash(transaction_id) AS {ID_HASH_COLUMN}"
    return f"WITH\n{base}\nSELECT base.*{inputs}{id_hash}\nFROM base"


def compile_features_sql(
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    *,
    with_labels: bool = False,
    ordered: bool = True,
    frames_source: str = FRAMES_VIEW,
) -> str:
    """Stage 3 of the fast path: features over base columns + aggregates in ``frames_source``."""
    delay = label_delay_micros(label_delay_days)
    ctes = [f"base AS (SELECT * FROM {frames_source})", "windowed AS (SELECT * FROM base)"]
    return _features_query(ctes, delay, with_labels, ordered)


# --- validation -------------------------------------------------------------------
def _relation_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {name}").fetchall()]


def _example(con: duckdb.DuckDBPyConnection, source: str, where: str, has_file: bool) -> str:
    """``transaction_id 'x' in <file>`` for the first offending row: where to look."""
    file_column = "source_file" if has_file else "NULL"
    tid, file = con.execute(
        f"SELECT transaction_id, {file_column} FROM {source} WHERE {where} LIMIT 1"
    ).fetchall()[0]
    return f"transaction_id {tid!r}" + (f" from {file}" if file else "")


def check_columns(con: duckdb.DuckDBPyConnection, source: str = TRANSACTIONS_VIEW) -> set[str]:
    """Reject input without a required column; return the missing optional columns."""
    columns = set(_relation_columns(con, source))
    absent = [c for c in BASE_INPUTS if c not in columns]
    if absent:
        raise ValueError(
            f"transactions lack required column(s) {absent}: map them with the ingest column map"
        )
    return {c for c in OPTIONAL_INPUTS if c not in columns}


def check_transactions(con: duckdb.DuckDBPyConnection, source: str = TRANSACTIONS_VIEW) -> set[str]:
    """Reject input the features cannot be computed from; return missing optional columns.

    Messages name the column, the count, and the first offending transaction
    with its source file when the input carries one (curated data does).
    """
    missing = check_columns(con, source)
    has_file = "source_file" in _relation_columns(con, source)
    duplicated = (
        f"transaction_id IN (SELECT transaction_id FROM {source} GROUP BY 1 HAVING count(*) > 1)"
    )
    problems = [(f"{c} IS NULL", f"null {c}; fix or quarantine them") for c in NOT_NULL_INPUTS]
    problems += [
        ("amount < 0", "amount < 0; amounts must be >= 0"),
        (duplicated, "a duplicate transaction_id; ingest dedupes them"),
    ]
    counts = ", ".join(f"count(*) FILTER (WHERE {where})" for where, _ in problems)
    row = con.execute(f"SELECT {counts} FROM {source}").fetchall()[0]
    for (where, what), count in zip(problems, row, strict=True):
        if count:
            example = _example(con, source, where, has_file)
            raise ValueError(f"transactions: {count} row(s) with {what} (first: {example})")
    return missing


def may_fail_checks(base: pa.Table) -> bool:
    """Could :func:`check_transactions` reject these stage-1 rows? Cheap and never wrong
    when it says no: nulls and negative amounts are counted, and duplicate ids must share
    an id hash. Only a yes pays for the exact check (a GROUP BY over every id, another
    scan of the files: ~0.6 CPU-s at 1.75M rows), which names the rows or, on a hash
    collision, passes."""
    if any(base[c].null_count for c in NOT_NULL_INPUTS):
        return True
    if pc.any(pc.less(base["amount"], 0)).as_py():
        return True
    hashes = np.sort(base[ID_HASH_COLUMN].to_numpy())
    return bool(np.any(hashes[1:] == hashes[:-1]))


def check_labels(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """A labels table needs one row per transaction, a 0/1 label and a known-at time."""
    columns = set(_relation_columns(con, source))
    absent = [c for c in LABELS_COLUMNS if c not in columns]
    if absent:
        raise ValueError(f"labels table lacks column(s) {absent}; expected {list(LABELS_COLUMNS)}")
    bad = con.execute(
        f"SELECT transaction_id, is_fraud, label_known_at FROM {source} "
        "WHERE transaction_id IS NULL OR label_known_at IS NULL OR is_fraud IS NULL "
        "OR CAST(is_fraud AS INTEGER) NOT IN (0, 1) LIMIT 1"
    ).fetchall()
    if bad:
        raise ValueError(
            f"labels table: row {bad[0]} needs a transaction_id, is_fraud 0/1 and label_known_at"
        )
    dup = con.execute(
        f"SELECT transaction_id FROM {source} GROUP BY 1 HAVING count(*) > 1 LIMIT 1"
    ).fetchall()
    if dup:
        raise ValueError(
            f"labels table: transaction_id {dup[0][0]!r} appears more than once; keep the latest"
        )


# --- execution --------------------------------------------------------------------
def connect(
    threads: int = DEFAULT_THREADS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    temp_dir: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB sized for the feature job (2 threads, bounded memory, UTC)."""
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET TimeZone = 'UTC'")
    with contextlib.suppress(duckdb.InvalidInputException):
        # In Jupyter without ipywidgets DuckDB refuses to touch its progress bar.
        con.execute("SET enable_progress_bar = false")
    if temp_dir:
        con.execute(f"SET temp_directory = '{temp_dir}'")
    return con


def register_labels(con: duckdb.DuckDBPyConnection, labels: pa.Table) -> None:
    """Check a late-labels table and expose it to the queries as ``LABELS_VIEW``."""
    raw = f"{LABELS_VIEW}_raw"
    con.register(raw, labels)
    check_labels(con, raw)
    # One type for the join whatever the producer wrote (bool or int labels).
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {LABELS_VIEW} AS SELECT "
        "CAST(transaction_id AS VARCHAR) AS transaction_id, "
        f"CAST(is_fraud AS TINYINT) AS is_fraud, label_known_at FROM {raw}"
    )


def prepare_query(
    con: duckdb.DuckDBPyConnection,
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    labels: pa.Table | None = None,
    source: str = TRANSACTIONS_VIEW,
    ordered: bool = True,
) -> str:
    """Validate ``source`` (and ``labels``), compute the frames, return the feature query.

    Stage 1 reads the base columns and aggregate inputs from ``source`` with
    SQL (and checks them: :func:`may_fail_checks`); stage 2 computes every
    frame aggregate (:mod:`frames`) and registers the result on ``con`` as
    ``FRAMES_VIEW``; the returned query (stage 3)
    applies late-label corrections and the feature expressions to it.
    """
    delay = label_delay_micros(label_delay_days)
    missing = check_columns(con, source)
    if labels is not None:
        register_labels(con, labels)
    with_labels = labels is not None
    inputs_sql = compile_inputs_sql(
        label_delay_days, with_labels=with_labels, missing_columns=missing, source=source
    )
    base = con.sql(inputs_sql).to_arrow_table()
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The cheap check (one core's sort) runs beside the frames; bad input then
        # fails with the exact check's message, whatever the frames made of it.
        suspect = pool.submit(may_fail_checks, base)
        base = base.drop_columns([ID_HASH_COLUMN])
        try:
            aggregates = frames.evaluate(base, AGGREGATES, delay, threads=threads)
        finally:
            if suspect.result():
                check_transactions(con, source)
    windowed = base.drop_columns(list(frames.input_columns(AGGREGATES).values()))
    for name, column in aggregates.items():
        windowed = windowed.append_column(name, column)
    con.register(FRAMES_VIEW, windowed)
    return compile_features_sql(label_delay_days, with_labels=with_labels, ordered=ordered)


def output_schema() -> pa.Schema:
    """Arrow schema of the feature table (``dt`` included)."""
    return pa.schema(
        [
            pa.field("transaction_id", pa.string()),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("customer_id", pa.string()),
            pa.field("terminal_id", pa.string()),
            pa.field("amount", pa.float64()),
            pa.field(LABEL_COLUMN, pa.int8()),
            pa.field(PARTITION_COLUMN, pa.string()),
        ]
        + [pa.field(name, pa.float64()) for name in FEATURE_COLUMNS]
    )


def compute_features(
    con_or_table: duckdb.DuckDBPyConnection | pa.Table,
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    labels: pa.Table | None = None,
) -> pa.Table:
    """Point-in-time features for every transaction, ordered by (timestamp, transaction_id).

    ``con_or_table`` is either a pyarrow Table of curated transactions or a DuckDB
    connection holding a relation named ``transactions``. ``labels`` optionally
    gives late labels (``transaction_id, is_fraud, label_known_at``) overriding
    the curated ``is_fraud``; a label counts at t only once ``label_known_at <= t``.
    """
    if isinstance(con_or_table, pa.Table):
        con = connect()
        con.register(TRANSACTIONS_VIEW, con_or_table)
    elif isinstance(con_or_table, duckdb.DuckDBPyConnection):
        con = con_or_table
    else:
        raise TypeError("compute_features takes a pyarrow.Table or a duckdb connection")
    sql = prepare_query(con, label_delay_days, labels)
    table = con.sql(sql).to_arrow_table()
    return table.cast(output_schema())
