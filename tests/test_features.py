"""Point-in-time features: the DuckDB engine against an obviously-correct reference.

The reference below loops over every pair of transactions in plain Python,
straight from the written spec (pipelines/data/features/definitions.py docstring),
so it shares no code path with the SQL the engine generates.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main as cli_main
from pipelines.core.schema import CHANNELS, CURATED_SCHEMA
from pipelines.data.features import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    compute_features,
    duckdb_engine,
    frames,
    store,
)
from pipelines.data.features.build import build_feature_table
from pipelines.data.features.definitions import (
    LABEL_COLUMN,
    NO_PREVIOUS_TX_SECONDS,
    Aggregate,
    Window,
)
from pipelines.data.features.duckdb_engine import compile_sql
from pipelines.data.features.emr import JobCode, feature_step, submit_feature_step, upload_job_code

T0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
WINDOWS = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
TERMINAL_WINDOWS = ("1d", "7d", "30d")


# --- the crafted dataset ----------------------------------------------------------
@dataclass
class Tx:
    transaction_id: str
    timestamp: datetime
    customer_id: str
    terminal_id: str
    amount: float
    channel: str | None = "card_present"
    country: str | None = "US"
    is_cash: bool | None = False
    is_fraud: int | None = 0


def crafted_transactions(seed: int = 11) -> list[Tx]:
    """4 customers, 4 terminals, ~40 days, frauds, simultaneous rows and missing values."""
    rng = random.Random(seed)
    rows: list[Tx] = []
    for i in range(160):
        channel = rng.choice([*CHANNELS, None])
        rows.append(
            Tx(
                transaction_id=f"r{i:03d}",
                # Minute resolution makes same-timestamp ties likely.
                timestamp=T0 + timedelta(minutes=rng.randrange(0, 40 * 24 * 60, 7)),
                customer_id=f"C{rng.randrange(4)}",
                terminal_id=f"T{rng.randrange(4)}",
                amount=round(rng.uniform(1, 500), 2),
                channel=channel,
                country=rng.choice(["US", "GB", "FR", None]),
                is_cash=None if channel is None else channel == "atm",
                is_fraud=1 if rng.random() < 0.15 else 0,
            )
        )
    # Two simultaneous transactions of one customer at one terminal.
    rows += [
        Tx("tie-a", T0 + 3 * DAY, "C1", "T2", 50.0),
        Tx("tie-b", T0 + 3 * DAY, "C1", "T2", 70.0),
    ]
    rows += label_delay_rows()
    return rows


def label_delay_rows() -> list[Tx]:
    """Terminal TD: a fraud at day 1, then visits 6 days and 8 days minus 1 hour later."""
    return [
        Tx("td-fraud", T0 + DAY, "C9", "TD", 900.0, is_fraud=1),
        Tx("td-6d", T0 + 7 * DAY, "C8", "TD", 20.0),
        Tx("td-8d", T0 + 9 * DAY - HOUR, "C8", "TD", 25.0),
        Tx("td-11d", T0 + 12 * DAY, "C8", "TD", 30.0),
    ]


def to_table(rows: list[Tx]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in rows] for name in Tx.__dataclass_fields__}
    columns["dt"] = [r.timestamp.strftime("%Y-%m-%d") for r in rows]
    schema = pa.schema([CURATED_SCHEMA.field(name) for name in columns])
    return pa.Table.from_pydict(columns, schema=schema)


def labels_table(entries: list[tuple[str, int, datetime]]) -> pa.Table:
    return pa.table(
        {
            "transaction_id": [e[0] for e in entries],
            "is_fraud": pa.array([e[1] for e in entries], pa.int8()),
            "label_known_at": pa.array([e[2] for e in entries], pa.timestamp("us", tz="UTC")),
        }
    )


# --- the reference: plain loops over the spec --------------------------------------
def reference_features(
    rows: list[Tx], delay_days: int = 7, labels: dict[str, tuple[int, datetime]] | None = None
) -> dict[str, dict[str, float]]:
    """Every feature of every row, recomputed naively from its definition."""
    delay = timedelta(days=delay_days)
    labels = labels or {}

    def label_of(s: Tx) -> tuple[int, datetime]:
        if s.transaction_id in labels:
            return labels[s.transaction_id]
        return (s.is_fraud or 0), s.timestamp + delay

    out: dict[str, dict[str, float]] = {}
    for r in rows:
        t = r.timestamp
        mine = [s for s in rows if s.customer_id == r.customer_id and s.timestamp < t]
        f: dict[str, float] = {}
        for name, span in WINDOWS.items():
            amounts = [s.amount for s in mine if s.timestamp >= t - span] + [r.amount]
            f[f"cust_tx_count_{name}"] = len(amounts)
            f[f"cust_avg_amount_{name}"] = sum(amounts) / len(amounts)
        amounts = [s.amount for s in mine if s.timestamp >= t - 30 * DAY] + [r.amount]
        mean = sum(amounts) / len(amounts)
        std = math.sqrt(sum((a - mean) ** 2 for a in amounts) / len(amounts))
        f["amount_to_cust_avg_30d"] = r.amount / mean
        f["amount_zscore_30d"] = (r.amount - mean) / max(std, 1.0)
        f["log_amount"] = math.log(1 + r.amount)
        f["seconds_since_prev_tx"] = (
            (t - max(s.timestamp for s in mine)).total_seconds() if mine else NO_PREVIOUS_TX_SECONDS
        )
        f["new_terminal_for_customer"] = float(all(s.terminal_id != r.terminal_id for s in mine))
        f["new_channel_for_customer"] = float(
            r.channel is not None and all(s.channel != r.channel for s in mine)
        )
        f["new_country_for_customer"] = float(
            r.country is not None and all(s.country != r.country for s in mine)
        )
        f["hour_of_day"] = t.hour
        f["hour_sin"] = math.sin(2 * math.pi * t.hour / 24)
        f["hour_cos"] = math.cos(2 * math.pi * t.hour / 24)
        f["day_of_week"] = t.weekday()
        f["is_weekend"] = float(t.weekday() >= 5)
        f["is_night"] = float(t.hour < 6)
        f["is_cash_tx"] = float(bool(r.is_cash))
        for channel in CHANNELS:
            f[f"channel_{channel}"] = float(r.channel == channel)
        at_terminal = [s for s in rows if s.terminal_id == r.terminal_id]
        for name in TERMINAL_WINDOWS:
            span = WINDOWS[name]
            f[f"term_tx_count_{name}"] = 1 + sum(t - span <= s.timestamp < t for s in at_terminal)
            delayed = [s for s in at_terminal if t - delay - span <= s.timestamp < t - delay]
            known_frauds = [s for s in delayed if label_of(s)[0] == 1 and label_of(s)[1] <= t]
            f[f"term_fraud_count_{name}"] = len(known_frauds)
            f[f"term_fraud_rate_{name}"] = len(known_frauds) / len(delayed) if delayed else 0.0
        out[r.transaction_id] = {k: float(v) for k, v in f.items()}
    return out


def by_id(table: pa.Table) -> dict[str, dict[str, float]]:
    return {row["transaction_id"]: row for row in table.to_pylist()}


def assert_matches_reference(table: pa.Table, expected: dict[str, dict[str, float]]) -> None:
    actual = by_id(table)
    assert set(actual) == set(expected)
    mismatches = [
        (tid, name, actual[tid][name], value)
        for tid, features in expected.items()
        for name, value in features.items()
        if not math.isclose(actual[tid][name], value, rel_tol=1e-9, abs_tol=1e-9)
    ]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"


# --- equality with the reference ----------------------------------------------------
def test_reference_covers_exactly_the_feature_set():
    rows = crafted_transactions()
    assert tuple(reference_features(rows[:1])[rows[0].transaction_id]) == FEATURE_COLUMNS


def test_every_feature_equals_the_reference():
    rows = crafted_transactions()
    table = compute_features(to_table(rows))
    assert table.num_rows == len(rows)
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert all(table.schema.field(c).type == pa.float64() for c in FEATURE_COLUMNS)
    assert all(table[c].null_count == 0 for c in FEATURE_COLUMNS)
    assert_matches_reference(table, reference_features(rows))


@pytest.mark.parametrize("delay_days", [0, 3, 7])
def test_label_delay_parameter_matches_reference(delay_days):
    rows = crafted_transactions(seed=5)
    table = compute_features(to_table(rows), label_delay_days=delay_days)
    assert_matches_reference(table, reference_features(rows, delay_days))


def test_fraud_six_days_ago_is_not_known_but_eight_days_ago_is():
    rows = by_id(compute_features(to_table(label_delay_rows()), label_delay_days=7))
    assert rows["td-6d"]["term_fraud_count_30d"] == 0.0
    assert rows["td-8d"]["term_fraud_count_1d"] == 1.0
    assert rows["td-8d"]["term_fraud_rate_1d"] == 1.0
    assert rows["td-8d"]["term_fraud_rate_30d"] == 1.0
    # 11 days later the fraud left the 1-day delayed window but is in the 7-day one.
    assert rows["td-11d"]["term_fraud_count_1d"] == 0.0
    assert rows["td-11d"]["term_fraud_count_7d"] == 1.0
    # Activity counts the visits themselves: td-11d sees td-8d within one day? no: 3 days.
    assert rows["td-11d"]["term_tx_count_7d"] == 3.0


def test_explicit_label_known_at_controls_when_a_label_counts():
    rows = label_delay_rows()
    # The fraud is confirmed only 10 days after it happened; td-6d is re-labelled a
    # fraud one hour after it happened.
    labels = {
        "td-fraud": (1, T0 + 11 * DAY),
        "td-6d": (1, T0 + 7 * DAY + HOUR),
    }
    table = compute_features(
        to_table(rows),
        labels=labels_table([(k, v[0], v[1]) for k, v in labels.items()]),
    )
    actual = by_id(table)
    assert actual["td-8d"]["term_fraud_count_30d"] == 0.0  # not yet confirmed at day 9
    assert actual["td-11d"]["term_fraud_count_30d"] == 1.0  # confirmed at day 11
    assert actual["td-6d"]["is_fraud"] == 1  # the output label is the latest label
    assert_matches_reference(table, reference_features(rows, labels=labels))


def test_late_labels_on_the_crafted_dataset_match_reference():
    rows = crafted_transactions(seed=3)
    rng = random.Random(1)
    labels = {
        r.transaction_id: (rng.choice([0, 1]), r.timestamp + timedelta(hours=rng.randrange(0, 600)))
        for r in rng.sample(rows, 60)
    }
    table = compute_features(
        to_table(rows), labels=labels_table([(k, *v) for k, v in labels.items()])
    )
    assert_matches_reference(table, reference_features(rows, labels=labels))


def test_simultaneous_transactions_do_not_see_each_other():
    rows = by_id(compute_features(to_table(crafted_transactions())))
    for tid in ("tie-a", "tie-b"):
        assert rows[tid]["new_terminal_for_customer"] == rows["tie-a"]["new_terminal_for_customer"]
    assert rows["tie-a"]["cust_tx_count_1h"] == rows["tie-b"]["cust_tx_count_1h"]
    assert rows["tie-b"]["seconds_since_prev_tx"] == rows["tie-a"]["seconds_since_prev_tx"]


def test_first_transaction_gets_the_no_previous_sentinel_and_novelty_flags():
    rows = by_id(compute_features(to_table(label_delay_rows())))
    first = rows["td-6d"]
    assert first["seconds_since_prev_tx"] == NO_PREVIOUS_TX_SECONDS
    assert first["new_terminal_for_customer"] == 1.0
    assert rows["td-8d"]["new_terminal_for_customer"] == 0.0
    assert rows["td-8d"]["seconds_since_prev_tx"] == (2 * DAY - HOUR).total_seconds()


# --- point-in-time correctness --------------------------------------------------------
def test_later_transactions_and_later_labels_never_change_earlier_features():
    """Nothing that happens or becomes known after the cutoff reaches rows before it."""
    rows = crafted_transactions()
    cutoff = T0 + 20 * DAY
    early = [r for r in rows if r.timestamp < cutoff]
    # Feedback on early transactions that only arrives after the cutoff.
    feedback_at = cutoff + HOUR
    before = by_id(
        compute_features(
            to_table(rows),
            labels=labels_table([(r.transaction_id, 0, feedback_at) for r in early[:40]]),
        )
    )

    flipped = [
        Tx(**{**r.__dict__, "is_fraud": 1 - (r.is_fraud or 0)}) if r.timestamp >= cutoff else r
        for r in rows
    ]
    extra = [
        Tx(f"late{i}", cutoff + timedelta(hours=i), "C1", "T2", 999.0, is_fraud=1)
        for i in range(30)
    ]
    after = by_id(
        compute_features(
            to_table(flipped + extra),
            labels=labels_table(
                [(r.transaction_id, 1, feedback_at) for r in early[:40]]
                + [(x.transaction_id, 0, x.timestamp + DAY) for x in extra[:10]]
            ),
        )
    )
    checked = 0
    for tid, features in before.items():
        if features["timestamp"] < cutoff:
            expected = {k: v for k, v in features.items() if k != "is_fraud"}
            got = {k: v for k, v in after[tid].items() if k != "is_fraud"}
            assert got == expected, tid
            checked += 1
    assert checked == len(early)
    # The changes are real: rows after the cutoff do see them.
    assert any(after[x.transaction_id]["cust_tx_count_1d"] > 1 for x in extra)


def test_results_are_deterministic_and_independent_of_input_order():
    rows = crafted_transactions()
    first = compute_features(to_table(rows))
    assert compute_features(to_table(rows)).equals(first)
    shuffled = rows[:]
    random.Random(2).shuffle(shuffled)
    # Bit-for-bit: sums are exact decimals, so the order of additions cannot matter.
    assert compute_features(to_table(shuffled)).equals(first)


# --- input handling -----------------------------------------------------------------
def test_missing_optional_columns_are_read_as_unknown():
    rows = label_delay_rows()
    table = to_table(rows).select(
        ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]
    )
    out = by_id(compute_features(table))
    assert out["td-6d"]["new_country_for_customer"] == 0.0
    assert out["td-6d"]["channel_atm"] == 0.0
    assert out["td-8d"]["term_fraud_count_1d"] == 0.0  # no labels at all
    assert out["td-8d"]["is_fraud"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["amount"]), "lack required column"),
        (lambda t: t.set_column(4, "amount", pa.array([-1.0] * t.num_rows)), "amount < 0"),
        (lambda t: pa.concat_tables([t, t.slice(0, 1)]), "duplicate transaction_id"),
    ],
)
def test_bad_transactions_are_rejected_with_a_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        compute_features(change(to_table(label_delay_rows())))


def test_duplicate_labels_are_rejected():
    labels = labels_table([("td-6d", 1, T0 + 8 * DAY), ("td-6d", 0, T0 + 9 * DAY)])
    with pytest.raises(ValueError, match="'td-6d' appears more than once"):
        compute_features(to_table(label_delay_rows()), labels=labels)


@pytest.mark.parametrize("delay", [-1, 1.5, True])
def test_invalid_label_delay_is_rejected(delay):
    with pytest.raises(ValueError, match="label_delay_days"):
        compute_features(to_table(label_delay_rows()), label_delay_days=delay)


def test_generated_sql_reads_like_the_spec():
    sql = compile_sql(7)
    assert (
        "terminal_id_30d_delayed AS (PARTITION BY terminal_id ORDER BY ts_utc RANGE BETWEEN "
        "INTERVAL '37 days' PRECEDING AND INTERVAL '7 days 1 microsecond' PRECEDING)"
    ) in sql
    assert "count(*) FILTER (WHERE fraud_label = 1) OVER terminal_id_30d_delayed" in sql
    assert "late_label" not in sql  # without a labels table no correction is needed


# --- the fast frames against the readable window SQL ------------------------------------
def skewed_transactions(n: int = 3000, seed: int = 8) -> list[Tx]:
    """Half the rows on one customer and one terminal, ties, unknown channels/countries."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hot = rng.random() < 0.5
        channel = rng.choice([*CHANNELS, None])
        rows.append(
            Tx(
                transaction_id=f"s{i:05d}",
                timestamp=T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 60, 3)),
                customer_id="HOT" if hot else f"C{rng.randrange(60)}",
                terminal_id="HOT" if hot else f"T{rng.randrange(40)}",
                amount=round(rng.uniform(0.01, 2000), 2),
                channel=channel,
                country=rng.choice(["US", "GB", None]),
                is_cash=None if channel is None else channel == "atm",
                is_fraud=rng.choice([0, 0, 0, 1, None]),
            )
        )
    return rows


def window_sql_features(
    table: pa.Table, delay_days: int = 7, labels: pa.Table | None = None
) -> pa.Table:
    """The same features from compile_sql: every frame as a DuckDB RANGE window."""
    con = duckdb_engine.connect()
    con.register(duckdb_engine.TRANSACTIONS_VIEW, table)
    missing = duckdb_engine.check_transactions(con)
    if labels is not None:
        duckdb_engine.register_labels(con, labels)
    sql = compile_sql(delay_days, with_labels=labels is not None, missing_columns=missing)
    return con.sql(sql).to_arrow_table().cast(duckdb_engine.output_schema())


@pytest.mark.parametrize("delay_days", [0, 7])
def test_fast_frames_equal_the_window_sql_bit_for_bit_on_skewed_keys(delay_days):
    rows = skewed_transactions()
    rng = random.Random(4)
    labels = labels_table(
        [
            (r.transaction_id, rng.choice([0, 1]), r.timestamp + rng.randrange(400) * HOUR)
            for r in rng.sample(rows, 300)
        ]
    )
    table = to_table(rows)
    assert compute_features(table, delay_days).equals(window_sql_features(table, delay_days))
    assert compute_features(table, delay_days, labels).equals(
        window_sql_features(table, delay_days, labels)
    )


def test_frame_max_and_filtered_sums_match_sql_windows():
    """Aggregates the feature set does not use yet: a max that falls, sums with a filter."""
    rows = skewed_transactions(800, seed=2)
    day, week = Window("1d", 86_400_000_000), Window("7d", 7 * 86_400_000_000)
    aggregates = (
        Aggregate("max_cents_1d", "max", ("customer_id",), day, value="round(amount * 100)"),
        Aggregate("max_cash_7d", "max", ("terminal_id",), week, value="amount", filter="is_cash"),
        Aggregate(
            "cash_cents_7d_delayed", "sum", ("terminal_id",), week,
            value="round(amount * 100)", filter="is_cash", lag="label_delay",
        ),
        Aggregate("max_amount_ever", "max", ("customer_id", "channel"), None, value="amount"),
    )
    delay = 3 * 86_400_000_000
    con = duckdb_engine.connect()
    con.register("t", to_table(rows))
    inputs = "".join(f", {e} AS {c}" for e, c in frames.input_columns(aggregates).items())
    base = con.sql(
        f"SELECT transaction_id, customer_id, terminal_id, channel, amount, is_cash, "
        f"epoch_us(timestamp) AS ts_us, make_timestamp(epoch_us(timestamp)) AS ts_utc{inputs} "
        "FROM t ORDER BY transaction_id"
    ).to_arrow_table()
    fast = frames.evaluate(base, aggregates, delay, threads=2)
    con.register("base", base)
    windows = ", ".join(
        f"{duckdb_engine.aggregate_call(a)} OVER "
        f"({duckdb_engine.window_sql(a, delay)}) AS {a.name}"
        for a in aggregates
    )
    expected = con.sql(f"SELECT {windows} FROM base ORDER BY transaction_id").to_arrow_table()
    for a in aggregates:
        got = fast[a.name].to_pylist()
        want = expected[a.name].to_pylist()
        if a.function == "sum":
            want = [float(v or 0) for v in want]
        assert got == want, a.name
    assert any(v is None for v in fast["max_cash_7d"].to_pylist())  # empty frames are NULL


def test_sums_of_fractions_are_refused_by_name():
    table = pa.table(
        {"ts_us": [1, 2], "customer_id": ["a", "a"], "frame_input_0": [1.5, 2.0]}
    )
    aggregate = Aggregate("cust_amount", "sum", ("customer_id",), None, value="amount")
    with pytest.raises(ValueError, match="cust_amount: sums must be whole numbers"):
        frames.evaluate(table, (aggregate,), 0)


def test_partitions_are_written_per_day_whatever_the_row_order(tmp_path):
    table = compute_features(to_table(crafted_transactions()))
    # Shuffled and streamed in small batches: days come back again and again.
    shuffled = table.take(random.Random(3).sample(range(table.num_rows), table.num_rows))
    written = store.write_partitions(shuffled.to_batches(max_chunksize=7), tmp_path / "out")
    assert written.partitions == len(set(table["dt"].to_pylist()))
    assert written.rows == table.num_rows
    labels = table[LABEL_COLUMN].to_pylist()
    assert written.fraud_rate == pytest.approx(sum(labels) / len(labels))
    import pyarrow.dataset as ds

    back = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table()
    back = back.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])
    assert back.drop_columns(["dt"]).equals(table.drop_columns(["dt"]))
    assert [str(d) for d in back["dt"].to_pylist()] == table["dt"].to_pylist()


# --- the feature table in a workspace --------------------------------------------------
def write_curated(ws, rows: list[Tx]) -> None:
    table = to_table(rows)
    full = pa.table(
        {
            f.name: table[f.name] if f.name in table.column_names else pa.nulls(len(rows), f.type)
            for f in CURATED_SCHEMA
        },
        schema=CURATED_SCHEMA,
    )
    source = pa.array([f"transactions_{dt}.csv" for dt in full["dt"].to_pylist()])
    full = full.set_column(full.schema.get_field_index("source_file"), "source_file", source)
    for dt in sorted(set(full["dt"].to_pylist())):
        part = full.filter(pa.compute.equal(full["dt"], dt))
        directory = ws.curated / f"dt={dt}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, directory / "part-0.parquet")


def read_feature_table(ws) -> pa.Table:
    import pyarrow.dataset as ds

    dataset = ds.dataset(ws.features, format="parquet", partitioning="hive")
    return dataset.to_table().sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


def test_build_feature_table_publishes_partitions_and_manifest(workspace):
    rows = crafted_transactions()
    write_curated(workspace, rows)
    summary = build_feature_table(workspace)
    assert summary.rows == len(rows)
    assert summary.features == len(FEATURE_COLUMNS)
    assert summary.fraud_rate == pytest.approx(sum(r.is_fraud for r in rows) / len(rows))
    manifest = json.loads((workspace.features / "_feature_set.json").read_text())
    assert manifest["version"] == FEATURE_SET_VERSION
    assert manifest["feature_columns"] == list(FEATURE_COLUMNS)
    assert manifest["label_column"] == "is_fraud"
    assert manifest["label_delay_days"] == 7
    days = {p.name for p in workspace.features.iterdir() if p.is_dir()}
    assert days == {f"dt={r.timestamp:%Y-%m-%d}" for r in rows}
    table = read_feature_table(workspace)
    assert_matches_reference(table, reference_features(rows))
    assert {str(d) for d in table["dt"].to_pylist()} == {
        r.timestamp.strftime("%Y-%m-%d") for r in rows
    }


def test_build_reads_late_labels_from_the_workspace(workspace):
    rows = label_delay_rows()
    write_curated(workspace, rows)
    workspace.labels.mkdir(parents=True)
    pq.write_table(
        labels_table([("td-fraud", 1, T0 + 11 * DAY)]), workspace.labels / "feedback.parquet"
    )
    build_feature_table(workspace)
    out = by_id(read_feature_table(workspace))
    assert out["td-8d"]["term_fraud_count_30d"] == 0.0
    assert out["td-11d"]["term_fraud_count_30d"] == 1.0


def test_failed_build_keeps_the_previous_table(workspace):
    rows = label_delay_rows()
    write_curated(workspace, rows)
    build_feature_table(workspace)
    before = read_feature_table(workspace)
    # A second drop repeats a transaction id: the build must fail and change nothing.
    bad = workspace.curated / "dt=2024-03-02" / "part-1.parquet"
    pq.write_table(pq.read_table(workspace.curated / "dt=2024-03-02" / "part-0.parquet"), bad)
    with pytest.raises(ValueError, match="duplicate transaction_id.*transactions_2024-03-02.csv"):
        build_feature_table(workspace)
    assert read_feature_table(workspace).equals(before)
    leftovers = [p.name for p in workspace.features.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_an_unreadable_curated_file_is_named_and_the_previous_table_kept(workspace):
    write_curated(workspace, label_delay_rows())
    build_feature_table(workspace)
    before = read_feature_table(workspace)
    broken = workspace.curated / "dt=2024-03-02" / "part-0.parquet"
    broken.write_bytes(b"not parquet")  # a torn copy, a disk error
    with pytest.raises(ValueError, match=f"curated file {re.escape(str(broken))} is not a "
                                         "readable Parquet file.*fraudops backup restore"):
        build_feature_table(workspace)
    assert read_feature_table(workspace).equals(before)


def test_cli_prints_the_summary(workspace, capsys):
    write_curated(workspace, label_delay_rows())
    code = cli_main(["features", "--workdir", str(workspace.root), "--label-delay-days", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows" in out and "4" in out
    assert FEATURE_SET_VERSION in out
    manifest = json.loads((workspace.features / "_feature_set.json").read_text())
    assert manifest["label_delay_days"] == 3


def test_cli_without_curated_data_says_what_to_do(workspace, capsys):
    code = cli_main(["features", "--workdir", str(workspace.root)])
    assert code == 2
    assert "run the ingest job" in capsys.readouterr().err


# --- the EMR step ----------------------------------------------------------------------
def test_emr_step_runs_spark_submit_with_the_packaged_engine():
    code = JobCode("s3://artifacts/emr/fraudops_features.zip", "s3://artifacts/emr/feature_job.py")
    step = feature_step(
        code,
        "s3://lake/curated/transactions",
        "s3://lake/features/transactions",
        5,
        labels_uri="s3://lake/labels/transactions",
    )
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    args = step["HadoopJarStep"]["Args"]
    assert args[0] == "spark-submit"
    assert args[args.index("--py-files") + 1] == code.py_files_uri
    assert args[args.index("--py-files") + 2] == code.entry_uri
    assert args[args.index("--input") + 1] == "s3://lake/curated/transactions"
    assert args[args.index("--output") + 1] == "s3://lake/features/transactions"
    assert args[args.index("--label-delay-days") + 1] == "5"
    assert args[args.index("--labels") + 1] == "s3://lake/labels/transactions"


def test_emr_step_is_submitted_with_add_job_flow_steps():
    import boto3
    from botocore.stub import Stubber

    emr = boto3.client("emr", region_name="us-east-1")
    code = JobCode("s3://a/c.zip", "s3://a/feature_job.py")
    step = feature_step(code, "s3://lake/in", "s3://lake/out")
    with Stubber(emr) as stub:
        stub.add_response(
            "add_job_flow_steps",
            {"StepIds": ["s-1ABC"]},
            expected_params={"JobFlowId": "j-CLUSTER", "Steps": [step]},
        )
        assert submit_feature_step(emr, "j-CLUSTER", step) == "s-1ABC"
        stub.assert_no_pending_responses()


def test_emr_step_rejects_local_paths():
    code = JobCode("s3://a/c.zip", "s3://a/feature_job.py")
    with pytest.raises(ValueError, match="--output must be an s3://"):
        feature_step(code, "s3://lake/in", "/tmp/out")


def test_job_code_is_uploaded_and_importable_from_the_zip(tmp_path):
    import subprocess
    import sys
    import zipfile

    import boto3
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        code = upload_job_code(s3, "s3://artifacts/emr/features", tmp_path)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]}
    assert code.entry_uri == "s3://artifacts/emr/features/feature_job.py"
    assert keys == {"emr/features/fraudops_features.zip", "emr/features/feature_job.py"}
    archive = tmp_path / "fraudops_features.zip"
    assert "pipelines/data/features/spark_engine.py" in zipfile.ZipFile(archive).namelist()
    # spark-submit --py-files puts the zip first on sys.path: the job must import from it.
    probe = (
        f"import sys; sys.path.insert(0, {str(archive)!r}); "
        "from pipelines.data.features import definitions, spark_engine; "
        "print(definitions.__file__, definitions.FEATURE_SET_VERSION)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    where, version = done.stdout.split()
    assert where.startswith(str(archive))
    assert version == FEATURE_SET_VERSION


def test_feature_set_version_is_a_hash_of_the_definitions(monkeypatch):
    from pipelines.data.features import definitions

    assert definitions._fingerprint() == FEATURE_SET_VERSION
    changed = tuple(
        definitions.Feature(f.name, f"{f.expression} + 0", f.description)
        if f.name == "log_amount"
        else f
        for f in definitions.FEATURES
    )
    monkeypatch.setattr(definitions, "FEATURES", changed)
    assert definitions._fingerprint() != FEATURE_SET_VERSION


def test_cli_prints_the_compiled_sql(capsys):
    assert cli_main(["features", "--print-sql", "--label-delay-days", "2"]) == 0
    out = capsys.readouterr().out
    assert "INTERVAL '32 days' PRECEDING AND INTERVAL '2 days 1 microsecond' PRECEDING" in out
    assert "AS term_fraud_rate_30d" in out


def test_cli_rejects_a_negative_label_delay(workspace, capsys):
    code = cli_main(["features", "--workdir", str(workspace.root), "--label-delay-days", "-1"])
    assert code == 2
    assert "--label-delay-days must be >= 0" in capsys.readouterr().err


def test_built_table_is_queryable_through_the_lake_catalog(workspace):
    query = pytest.importorskip("pipelines.data.lake.query")
    rows = crafted_transactions()
    write_curated(workspace, rows)
    summary = build_feature_table(workspace)
    assert summary.catalog == "registered as 'features'"
    result = query.run_query(workspace, "SELECT count(*) AS n, sum(is_fraud) AS f FROM features")
    assert result.to_pylist() == [{"n": len(rows), "f": sum(r.is_fraud for r in rows)}]
