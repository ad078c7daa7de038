"""One micro-batch of raw transactions -> validated, featurised, scored, explained.

Shared by the local stream scorer (``fraudops stream``) and the Kinesis Lambda;
only the sinks differ. Validation and tokenisation are the ingest job's own
functions (``classify``, ``Tokeniser``), so a record the stream accepts is one
ingestion would accept, with the same card token. A valid record dated more than
the future skew ahead of the processing clock is then refused before it reaches
the online state (see :func:`split_ahead`). Features are computed one
transaction at a time by the online engine; scoring is vectorised over the
micro-batch (features of a batch never depend on its scores).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.compliance.carddata import mask_card_numbers
from pipelines.core import schema
from pipelines.core.params import DEFAULT_MAX_FUTURE_SKEW_SECONDS
from pipelines.data.features.definitions import CANONICAL_CURATED_COLUMNS
from pipelines.data.ingest.columns import DEFAULT_TIME_UNIT, epoch_micros, forbidden_columns
from pipelines.data.ingest.run import card_text
from pipelines.data.ingest.sources import LINE_COLUMN, LINE_END_COLUMN, canonical_table
from pipelines.data.ingest.tokenise import Tokeniser
from pipelines.data.ingest.validation import (
    DERIVED_ID_PREFIX,
    QUARANTINE_TEXT_COLUMNS,
    CardColumns,
    card_columns,
    classify,
)
from pipelines.serving.online.engine import (
    OnlineFeatureEngine,
    OutOfOrder,
    exact_seconds,
    iso_time,
)
from pipelines.serving.online.reasons import TOP_N, explain
from pipelines.serving.scoring.batch import ALERT, CLEAR, SCORED_SCHEMA
from pipelines.serving.stream.source import RawRecord

# A dead letter's reason is ``out_of_order:<entity>=<key> late by <s> s (...)`` or
# ``out_of_order:stream late by ...`` (OutOfOrder.detail), or
# ``future_timestamp:transaction <id> at <time> is <s> s ahead of ...`` (ahead_detail);
# summaries count the prefix.
OUT_OF_ORDER = "out_of_order"
FUTURE_TIMESTAMP = "future_timestamp"
DETAILED_REASONS = (OUT_OF_ORDER, FUTURE_TIMESTAMP)
FORBIDDEN = "forbidden_column"
MALFORMED = "malformed_row"
# Raw fields the reason sentences may quote (never the card number).
CONTEXT_FIELDS = ("amount", "currency", "channel", "country", "terminal_id")


class StreamModel(Protocol):
    """What the stream needs from a model: its features, version, threshold and scores."""

    feature_columns: list[str]
    version: int
    threshold: float

    def score(self, matrix: np.ndarray) -> np.ndarray: ...

    def explain(self, matrix: np.ndarray) -> list[dict] | None: ...


@dataclass
class BatchOutcome:
    """Everything one micro-batch produced, before it is written anywhere."""

    scored: pa.Table
    alerts: list[dict[str, Any]]
    dead_letters: pa.Table
    dead_letter_keys: list[str]
    processed: dict[str, int]  # transaction id -> ts_us of every transaction scored
    counts: dict[str, int] = field(default_factory=dict)


# --- validation -----------------------------------------------------------------------------
def _headers(records: Sequence[RawRecord], column_map: Mapping[str, str]) -> list[str]:
    headers: dict[str, None] = {}
    last = None  # records of one source share their fields: compare, don't re-add
    for record in records:
        values = record.values
        if values is not None and values.keys() != last:
            headers.update(dict.fromkeys(values))
            last = values.keys()
    # A required column no field provides (by name or through the map, e.g. PaySim's step
    # -> timestamp) is added empty, so each record is dead-lettered missing_*.
    provided = {column_map.get(h) or h.strip().lower() for h in headers}
    for name in schema.REQUIRED_COLUMNS:
        if name not in provided:
            headers.setdefault(name, None)
    return list(headers)


def raw_table(
    records: Sequence[RawRecord], source: str, column_map: Mapping[str, str]
) -> pa.Table:
    """The ingest job's all-text canonical table for ``records`` (``_line``, ``_file`` = 0)."""
    headers = _headers(records, column_map)
    empty: dict[str, str | None] = {}
    values = pa.Table.from_pylist(
        [empty if r.values is None else r.values for r in records],
        schema=pa.schema([(h, pa.string()) for h in headers]),
    )
    columns = {h: values.column(h) for h in headers}
    lines = np.array([r.line for r in records], dtype=np.int64)
    malformed = np.array([r.values is None for r in records], dtype=bool)
    table = canonical_table(headers, columns, lines, malformed, column_map, source)
    return table.append_column("_file", pa.array(np.zeros(len(records), np.int32)))


@lru_cache(maxsize=1024)
def _has_forbidden(fields: tuple[str, ...]) -> bool:
    return bool(forbidden_columns(list(fields)))  # records of one source share their fields


def split_forbidden(records: Sequence[RawRecord]) -> tuple[list[RawRecord], list[RawRecord]]:
    """Records carrying card verification data or PINs are refused whole (PCI DSS)."""
    kept, refused = [], []
    last, last_bad = None, False
    for record in records:
        values = record.values
        if values is None:
            kept.append(record)
            continue
        if values.keys() != last:  # same fields as the record before: same verdict
            last, last_bad = values.keys(), _has_forbidden(tuple(values))
        (refused if last_bad else kept).append(record)
    return kept, refused


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its per-record detail (what summaries count)."""
    kind = reason.split(":", 1)[0]
    return kind if kind in DETAILED_REASONS else reason


def wall_clock() -> datetime:
    """The processing clock of a live stream (injected instead in tests and replays)."""
    return datetime.now(UTC)


def ahead_detail(transaction_id: str, ts_us: int, clock_us: int, skew_us: int) -> str:
    """Why a record dated too far ahead was refused, and what to do (its reason text)."""
    return (f"transaction {transaction_id} at {iso_time(ts_us)} is "
            f"{exact_seconds(ts_us - clock_us)} s ahead of the processing clock "
            f"({iso_time(clock_us)}), more than the allowed future skew of "
            f"{exact_seconds(skew_us)} s; correct the sender's clock and send it again "
            "(replaying a file dated ahead of today: fraudops stream --now <its present>)")


def split_ahead(rows: list[dict[str, Any]], clock: datetime,
                skew_seconds: int) -> tuple[list[dict[str, Any]], list[tuple[dict, str]]]:
    """Rows at most ``skew_seconds`` ahead of ``clock``, and the others with their reason.

    Decided before features, so a wrong clock never reaches the online state: its
    record would otherwise become the stream's newest and every correctly dated
    record after it would be dead-lettered as late.
    """
    clock_us = epoch_micros(clock)
    skew_us = skew_seconds * 1_000_000
    latest = clock_us + skew_us
    kept, ahead = [], []
    for row in rows:
        if row["ts_us"] > latest:
            tx = row["transaction_id"]
            ahead.append((row, ahead_detail(tx, row["ts_us"], clock_us, skew_us)))
        else:
            kept.append(row)
    return kept, ahead


def _dead_rows(
    raw: pa.Table, cards: CardColumns, rows: Sequence[int], reasons: Sequence[str],
    source: str, run_id: str, day: str,
) -> pa.Table:
    """Rejected records in QUARANTINE_SCHEMA: original text, card masked, reason and line."""
    take = pa.array(rows, pa.int64())
    n = len(rows)
    columns: dict[str, Any] = {
        name: raw.column(name).take(take) for name in QUARANTINE_TEXT_COLUMNS
    }
    columns.update(
        card_masked=cards.masked_rows(take),
        reason=pa.array(reasons, pa.string()),
        source_file=pa.repeat(pa.scalar(source), n),
        source_line=raw.column(LINE_COLUMN).take(take),
        source_line_end=raw.column(LINE_END_COLUMN).take(take),
        ingestion_id=pa.repeat(pa.scalar(run_id), n),
        dt=pa.repeat(pa.scalar(day), n),
    )
    return pa.table(columns).cast(schema.QUARANTINE_SCHEMA)


def _refused_rows(refused: Sequence[RawRecord], source: str, run_id: str, day: str) -> pa.Table:
    """Refused records keep only their id and line: nothing sensitive is stored."""
    rows = [
        {
            "transaction_id": mask_card_numbers((r.values or {}).get("transaction_id") or "")
            or None,
            "reason": FORBIDDEN,
            "source_file": source,
            "source_line": r.line,
            "ingestion_id": run_id,
            "dt": day,
        }
        for r in refused
    ]
    return pa.Table.from_pylist(rows, schema=schema.QUARANTINE_SCHEMA)


# --- features and scores ----------------------------------------------------------------------
def curated_rows(curated: pa.Table) -> list[dict[str, Any]]:
    """The columns the online engine reads and the user's feature columns (any column
    outside the canonical curated schema), as Python rows (``ts_us`` in microseconds)."""
    ts = pc.cast(curated.column("timestamp"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    names = ("transaction_id", "customer_id", "terminal_id", "amount", "channel", "country",
             "is_cash", "is_fraud", "currency")
    user = [n for n in curated.column_names if n not in CANONICAL_CURATED_COLUMNS]
    columns = {n: curated.column(n).to_pylist() for n in (*names, *user)}
    columns["ts_us"] = ts.to_pylist()
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def model_matrix(features: list[list[float | None]], engine: OnlineFeatureEngine,
                 model_columns: Sequence[str],
                 rows: Sequence[Mapping[str, Any]] = ()) -> np.ndarray:
    """Online features in the model's column order (NULL -> NaN, XGBoost's missing value).

    A model column the definitions do not declare is one of the user's feature
    columns, read from each transaction (``rows``) as the feature table holds it;
    with text among them (categorical features) the matrix is of objects, which
    the model's ``inference.py`` encodes.
    """
    position = {name: i for i, name in enumerate(engine.feature_columns)}
    user = [c for c in model_columns if c not in position]
    missing = [c for c in user if not rows or c not in rows[0]]
    if missing:
        raise ValueError(
            f"the model needs feature(s) {missing} that pipelines.data.features.definitions does "
            "not declare and the transactions do not carry; deploy a model trained on the "
            "current feature set, or send the user feature columns it was trained with"
        )
    # numpy turns None (a NULL feature) into NaN for a float64 array.
    full = np.array(features, dtype=np.float64).reshape(len(features), len(position))
    if not user:
        return full[:, [position[c] for c in model_columns]]
    values = {c: [row[c] for row in rows] for c in user}
    text = any(isinstance(v, str) for c in user for v in values[c])
    matrix = np.empty((len(rows), len(model_columns)), dtype=object if text else np.float64)
    for j, name in enumerate(model_columns):
        if name in position:
            matrix[:, j] = full[:, position[name]]
        else:
            column = values[name]
            matrix[:, j] = column if text else np.array(column, dtype=np.float64)
    return matrix


def scored_table(rows: Sequence[Mapping[str, Any]], scores: np.ndarray, model: StreamModel,
                 scored_at: datetime) -> pa.Table:
    """Rows in the batch scorer's SCORED_SCHEMA, so both land in one ``scored`` table."""
    n = len(rows)
    return pa.table(
        {
            "transaction_id": [r["transaction_id"] for r in rows],
            "customer_id": [r["customer_id"] for r in rows],
            "terminal_id": [r["terminal_id"] for r in rows],
            "timestamp": pa.array([r["ts_us"] for r in rows], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "score": pa.array(scores, pa.float64()),
            "decision": np.where(scores >= model.threshold, ALERT, CLEAR).tolist() if n else [],
            "model_version": pa.array([model.version] * n, pa.int64()),
            "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=SCORED_SCHEMA,
    )


def alert_rows(rows: Sequence[Mapping[str, Any]], scores: np.ndarray, matrix: np.ndarray,
               model: StreamModel, features: Sequence[Sequence[float | None]],
               engine: OnlineFeatureEngine) -> list[dict[str, Any]]:
    """Rows at or above the threshold, with reason codes from the model's contributions."""
    chosen = np.flatnonzero(scores >= model.threshold)
    if chosen.size == 0:
        return []
    explained = model.explain(matrix[chosen])
    alerts = []
    for k, i in enumerate(chosen):
        row = rows[i]
        context: dict[str, Any] = dict(zip(engine.feature_columns, features[i], strict=True))
        context.update({f: row.get(f) for f in CONTEXT_FIELDS})
        reasons = explain(explained[k]["top"], context) if explained else []
        alerts.append(
            {
                "transaction_id": row["transaction_id"],
                "customer_id": row["customer_id"],
                "terminal_id": row["terminal_id"],
                "amount": row["amount"],
                "timestamp": datetime.fromtimestamp(row["ts_us"] / 1e6, UTC),
                "score": float(scores[i]),
                "model_version": model.version,
                "reasons": reasons,
            }
        )
    return alerts


def explain_top_n() -> int:
    """How many contributions to ask for: extra, since equal sentences are merged."""
    return TOP_N + 2


# --- the whole batch ----------------------------------------------------------------------------
def process_batch(
    records: Sequence[RawRecord],
    *,
    engine: OnlineFeatureEngine,
    model: StreamModel,
    tokeniser: Tokeniser,
    scored_before: Callable[[list[str]], Container[str]],
    seen_dead_keys: Sequence[str],
    source: str,
    run_id: str,
    column_map: Mapping[str, str] | None = None,
    time_origin: datetime | None = None,
    time_unit: str = DEFAULT_TIME_UNIT,
    now: datetime | None = None,
    processing_time: datetime | None = None,
    max_future_skew_seconds: int = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
    before_features: Callable[[list[dict[str, Any]]], None] | None = None,
) -> BatchOutcome:
    """Validate, tokenise, featurise (one at a time), score and explain one micro-batch.

    The engine's state advances; nothing is written. Records scored by an earlier
    batch are skipped (counted): ``scored_before(ids)`` says which, asked for the
    given ids, then for the ids derived for records without one. Rejected records
    become dead letters, among them those dated more than ``max_future_skew_seconds`` after
    ``processing_time`` (the processing clock; default ``now``, the wall clock,
    which also stamps ``scored_at`` and the dead letters' day).
    ``before_features(rows)`` sees the valid rows first (the Lambda prefetches
    their entities' state from DynamoDB there).
    """
    now = now or wall_clock()
    day = f"{now:%Y-%m-%d}"
    counts = {"records": len(records), "scored": 0, "alerts": 0, "dead_letters": 0,
              "duplicates": 0}
    kept, refused = split_forbidden(records)
    dead = [_refused_rows(refused, source, run_id, day)] if refused else []
    rows: list[dict[str, Any]] = []
    dead_keys: list[str] = []
    if kept:
        raw = raw_table(kept, source, column_map or {})
        card_values = card_text(raw.column("card_number"))
        cards = card_columns(card_values, tokeniser.card_lookup(card_values))
        raw_ids = [i for i in dict.fromkeys(
            pc.utf8_trim_whitespace(raw.column("transaction_id")).to_pylist()) if i is not None]
        scored = scored_before(raw_ids)
        seen = [i for i in raw_ids if i in scored]
        classified = classify(
            raw=raw,
            source_files=[source],
            cards=cards,
            seen_ids=pa.table({"key": pa.array(seen, pa.string())}),
            seen_quarantine=pa.table({"key": pa.array(list(seen_dead_keys), pa.string())}),
            ingestion_id=run_id,
            ingestion_day=day,
            time_origin=time_origin,
            time_unit=time_unit,
        )
        dead.append(classified.quarantine)
        dead_keys = classified.quarantine_keys.to_pylist()
        for _, status, _, n in classified.counts:
            if status.startswith("duplicate"):
                counts["duplicates"] += n
        first_row: dict[str, int] = {}
        for index, tx in enumerate(classified.transaction_ids.to_pylist()):
            if tx is not None:
                first_row.setdefault(tx, index)
        # Records without an id get one derived from their content: only now can a
        # replay of them be recognised (records with ids were checked above).
        derived = [i for i in first_row if i.startswith(DERIVED_ID_PREFIX)]
        replays = scored_before(derived) if derived else ()
        valid = []
        for row in curated_rows(classified.curated):
            if row["transaction_id"] in replays:
                counts["duplicates"] += 1
            else:
                valid.append(row)
        # Arrival order (validation groups rows by day): whether a record is late must
        # not depend on where micro-batch boundaries fall, or restarts could differ.
        valid.sort(key=lambda row: first_row[row["transaction_id"]])
        valid, ahead = split_ahead(valid, processing_time or now, max_future_skew_seconds)
        if ahead:
            dead.append(_dead_rows(raw, cards, [first_row[r["transaction_id"]] for r, _ in ahead],
                                   [f"{FUTURE_TIMESTAMP}:{why}" for _, why in ahead],
                                   source, run_id, day))
        if before_features is not None:
            before_features(valid)
        rows, late = _featurise(valid, engine)
        if late:
            dead.append(_dead_rows(raw, cards, [first_row[e.transaction_id] for e in late],
                                   [f"{OUT_OF_ORDER}:{e.detail}" for e in late],
                                   source, run_id, day))
    features = [row.pop("_features") for row in rows]
    matrix = model_matrix(features, engine, model.feature_columns, rows)
    scores = model.score(matrix) if rows else np.empty(0)
    dead_table = (pa.concat_tables(dead) if dead else schema.QUARANTINE_SCHEMA.empty_table())
    outcome = BatchOutcome(
        scored=scored_table(rows, np.asarray(scores, dtype=np.float64), model, now),
        alerts=alert_rows(rows, scores, matrix, model, features, engine) if rows else [],
        dead_letters=dead_table,
        dead_letter_keys=dead_keys,
        processed={r["transaction_id"]: r["ts_us"] for r in rows},
        counts=counts,
    )
    counts["scored"] = len(rows)
    counts["alerts"] = len(outcome.alerts)
    counts["dead_letters"] = dead_table.num_rows
    return outcome


def _featurise(
    rows: list[dict[str, Any]], engine: OnlineFeatureEngine
) -> tuple[list[dict[str, Any]], list[OutOfOrder]]:
    """Online features per row in arrival order; rows too late for exact features (older
    than their entities' state, or beyond the allowed lateness) go back as refusals."""
    done, late = [], []
    for row in rows:
        try:
            row["_features"] = engine.process(row)
        except OutOfOrder as refused:
            late.append(refused)
            continue
        done.append(row)
    return done, late
