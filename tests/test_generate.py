"""The synthetic generator: realistic, labelled, deterministic, dirty on request."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main
from pipelines.core.schema import CHANNELS, LANDING_COLUMNS, REQUIRED_COLUMNS
from pipelines.data.datagen import (
    AML_SCENARIOS,
    FRAUD_SCENARIOS,
    MALFORMED_CLASSES,
    GeneratorConfig,
    generate_transactions,
    luhn_valid,
    write_landing_drops,
)
from pipelines.data.datagen import writer as writer_module
from pipelines.data.datagen.cards import generate_card_numbers
from pipelines.data.datagen.catalog import KIND_STORE
from pipelines.data.datagen.population import build_customers, build_terminals

CONFIG = GeneratorConfig(transactions=30_000, days=28, seed=7)
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ISSUER_PREFIX = re.compile(r"^(4|5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720|6011|65)")


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return generate_transactions(CONFIG)


@pytest.fixture(scope="module")
def frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()


def read_drop_as_text(path: Path) -> pd.DataFrame:
    """A CSV drop exactly as written: every field text, empty fields null."""
    options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in LANDING_COLUMNS}, strings_can_be_null=True
    )
    return pacsv.read_csv(path, convert_options=options).to_pandas()


# --- shape ------------------------------------------------------------------------


def test_table_has_the_landing_columns_and_exact_row_count(table: pa.Table) -> None:
    assert table.column_names == list(LANDING_COLUMNS)
    assert table.num_rows == CONFIG.transactions
    for name in REQUIRED_COLUMNS:
        assert table[name].null_count == 0, name


def test_transaction_ids_unique_and_rows_sorted_within_the_period(frame: pd.DataFrame) -> None:
    assert frame.transaction_id.is_unique
    assert frame.timestamp.is_monotonic_increasing
    start = pd.Timestamp(CONFIG.start_date, tz="UTC")
    assert frame.timestamp.min() >= start
    assert frame.timestamp.max() < start + pd.Timedelta(days=CONFIG.days)
    assert frame.amount.gt(0).all()


def test_every_card_number_is_16_digits_luhn_valid_with_a_real_issuer_prefix(
    frame: pd.DataFrame,
) -> None:
    cards = frame.card_number.unique()
    assert all(len(card) == 16 and luhn_valid(card) for card in cards)
    assert all(ISSUER_PREFIX.match(card) for card in cards)
    # One card per customer, never shared.
    assert frame.groupby("card_number").customer_id.nunique().max() == 1


def test_luhn_check_rejects_a_changed_digit() -> None:
    card = generate_card_numbers(np.random.default_rng(1), 1)[0]
    assert luhn_valid(card)
    broken = card[:-1] + str((int(card[-1]) + 3) % 10)
    assert not luhn_valid(broken)
    assert not luhn_valid("4111-1111-1111-1111")


def test_channels_cash_and_currencies_are_consistent(frame: pd.DataFrame) -> None:
    assert set(frame.channel) <= set(CHANNELS)
    atm = frame[frame.channel == "atm"]
    assert (atm.merchant_category == "6011").all() and atm.is_cash.all()
    assert not frame[frame.channel == "ecommerce"].is_cash.any()
    assert frame.currency.eq("USD").mean() > 0.95
    assert frame.currency.nunique() > 1
    assert {"5411", "5812", "5999", "4829", "6011", "7995", "5732"} <= set(frame.merchant_category)


# --- determinism -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, table: pa.Table, fmt: str) -> None:
    again = generate_transactions(CONFIG)
    assert again.equals(table)
    first = write_landing_drops(table, tmp_path / "a", fmt, 0.01, CONFIG.seed)
    second = write_landing_drops(again, tmp_path / "b", fmt, 0.01, CONFIG.seed)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_another_seed_gives_other_data(table: pa.Table) -> None:
    other = generate_transactions(GeneratorConfig(transactions=30_000, days=28, seed=8))
    assert not other["amount"].equals(table["amount"])


# --- fraud scenarios -----------------------------------------------------------------


def test_every_fraud_scenario_is_present_and_labelled(frame: pd.DataFrame) -> None:
    for scenario in FRAUD_SCENARIOS:
        rows = frame[frame.fraud_scenario == scenario]
        assert len(rows) > 0, scenario
        assert (rows.is_fraud == 1).all(), scenario
    assert set(frame.is_fraud.unique()) == {0, 1}
    assert 0.005 <= frame.is_fraud.mean() <= 0.015
    ordinary = frame[frame.fraud_scenario.isna()]
    assert (ordinary.is_fraud == 0).all()


def test_card_testing_is_bursts_of_tiny_online_charges(frame: pd.DataFrame) -> None:
    tests = frame[frame.fraud_scenario == "card_testing"]
    probes = tests[tests.amount < 5.0]
    assert len(probes) / len(tests) > 0.6
    assert (probes.channel == "ecommerce").all()
    # Within each burst the next probe follows within minutes.
    gaps = probes.groupby("customer_id").timestamp.diff().dropna()
    assert gaps.median() < pd.Timedelta(minutes=5)


def test_account_takeover_is_faster_larger_and_more_online_than_the_holders_habit(
    frame: pd.DataFrame,
) -> None:
    ato = frame[frame.fraud_scenario == "account_takeover"]
    victims = frame[frame.customer_id.isin(ato.customer_id) & frame.fraud_scenario.isna()]
    assert ato.amount.median() > 1.5 * victims.amount.median()
    assert (ato.channel == "ecommerce").mean() > 0.6
    assert (ato.country != "US").mean() > (victims.country != "US").mean()
    ato_gap = ato.groupby("customer_id").timestamp.diff().dropna().median()
    usual_gap = victims.groupby("customer_id").timestamp.diff().dropna().median()
    assert ato_gap < usual_gap / 2


def test_compromised_terminals_concentrate_fraud_in_time_windows(frame: pd.DataFrame) -> None:
    hit = frame[frame.fraud_scenario == "compromised_terminal"]
    assert (hit.channel == "card_present").all()
    spans = hit.groupby("terminal_id").timestamp.agg(lambda s: s.max() - s.min())
    assert spans.max() <= pd.Timedelta(days=29)
    # Most of a compromised terminal's traffic inside its window is fraud.
    for terminal, rows in hit.groupby("terminal_id"):
        window = frame[
            (frame.terminal_id == terminal)
            & frame.timestamp.between(rows.timestamp.min(), rows.timestamp.max())
        ]
        assert window.is_fraud.mean() > 0.6


def test_large_amounts_stand_out_against_the_customers_habit(frame: pd.DataFrame) -> None:
    large = frame[frame.fraud_scenario == "large_amount"]
    habit = frame[frame.fraud_scenario.isna()].groupby("customer_id").amount.median()
    ratio = large.amount.to_numpy() / habit.reindex(large.customer_id).to_numpy()
    assert np.nanmedian(ratio) > 4


def test_legitimate_behaviour_overlaps_fraud_signals(frame: pd.DataFrame) -> None:
    legit = frame[frame.fraud_scenario.isna()]
    # Travel and foreign web shops: legit foreign spending exists ...
    assert (legit.country != "US").sum() > 0.01 * len(legit)
    # ... and so do legit purchases far above habit and tiny online ones.
    habit = legit.groupby("customer_id").amount.transform("median")
    assert (legit.amount > 5 * habit).sum() > 0.001 * len(legit)
    assert ((legit.amount < 5) & (legit.channel == "ecommerce")).sum() > 0


# --- AML patterns -----------------------------------------------------------------


def test_aml_patterns_are_present_and_not_card_fraud(frame: pd.DataFrame) -> None:
    for scenario in AML_SCENARIOS:
        rows = frame[frame.fraud_scenario == scenario]
        assert len(rows) > 0, scenario
        assert (rows.is_fraud == 0).all() and rows.is_cash.all()
    ctr = frame[frame.is_cash & (frame.amount > 10_000)]
    assert len(ctr) >= 3
    assert (ctr.fraud_scenario == "aml_ctr").all()


def test_structuring_is_repeated_cash_just_under_10k_within_days(frame: pd.DataFrame) -> None:
    near = frame[frame.is_cash & frame.amount.between(9_000, 9_999.99)]
    found = 0
    for _, rows in near.groupby("customer_id"):
        if len(rows) >= 3 and rows.timestamp.max() - rows.timestamp.min() <= pd.Timedelta(days=4):
            found += 1
            assert (rows.fraud_scenario == "aml_structuring").all()
    assert found >= 2


# --- rhythms and places ---------------------------------------------------------------


def test_daily_rhythm_nights_are_quiet(frame: pd.DataFrame) -> None:
    per_hour = frame.timestamp.dt.hour.value_counts().reindex(range(24), fill_value=0)
    night = per_hour.loc[1:4].mean()
    day = per_hour.loc[10:20].mean()
    assert day > 5 * night
    assert per_hour.loc[12] > per_hour.loc[15]  # lunch peak
    assert per_hour.loc[18] > per_hour.loc[15]  # evening peak


def test_weekly_rhythm_saturdays_busier_than_sundays(frame: pd.DataFrame) -> None:
    per_day = frame.groupby(frame.timestamp.dt.date).size()
    weekday = pd.Series([d.weekday() for d in per_day.index], index=per_day.index)
    saturday = per_day[weekday == 5].mean()
    sunday = per_day[weekday == 6].mean()
    assert saturday > 1.2 * sunday


def test_customers_mostly_shop_at_a_few_nearby_stores(frame: pd.DataFrame) -> None:
    stores = frame[(frame.channel == "card_present") & frame.fraud_scenario.isna()]
    stores = stores[stores.country == "US"]
    counts = stores.groupby(["customer_id", "terminal_id"]).size()
    ranked = counts.sort_values(ascending=False, kind="stable")
    top5 = ranked.groupby(level=0).head(5).groupby(level=0).sum() / counts.groupby(level=0).sum()
    busy = stores.customer_id.value_counts()
    assert top5[busy[busy >= 20].index].median() > 0.5
    # Every customer's in-person terminals are a small subset of all stores.
    assert stores.groupby("customer_id").terminal_id.nunique().max() <= 25


def test_the_stores_a_customer_frequents_are_the_nearest_to_home() -> None:
    config = GeneratorConfig(transactions=5_000, days=7, seed=5)
    rng = np.random.default_rng(0)
    terminals = build_terminals(config, rng)
    customers = build_customers(config, terminals, rng)
    stores = terminals.indices(KIND_STORE, domestic=True)
    for c in range(0, customers.size, 17):
        dist = np.hypot(terminals.x[stores] - customers.x[c], terminals.y[stores] - customers.y[c])
        near = np.hypot(
            terminals.x[customers.near_stores[c]] - customers.x[c],
            terminals.y[customers.near_stores[c]] - customers.y[c],
        )
        assert np.all(np.diff(near) >= 0)  # nearest first
        assert near[-1] <= np.sort(dist)[near.size - 1] + 1e-9


# --- malformed rows -----------------------------------------------------------------


def classify_malformed(drop: pd.DataFrame) -> dict[str, int]:
    """Count each kind of bad row the way an ingest validator would see it."""
    amount = pd.to_numeric(drop.amount, errors="coerce")
    missing = drop[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    ts_ok = pd.to_datetime(drop.timestamp, format="%Y-%m-%dT%H:%M:%SZ", errors="coerce").notna()
    return {
        "missing_required": int(missing.sum()),
        "unparseable_amount": int((drop.amount.notna() & amount.isna()).sum()),
        "negative_amount": int((amount < 0).sum()),
        "absurd_amount": int((amount > 1e7).sum()),
        "bad_timestamp": int((drop.timestamp.notna() & ~ts_ok).sum()),
        "bad_currency": int((~drop.currency.fillna("").str.fullmatch(r"[A-Z]{3}")).sum()),
        "duplicate_transaction_id": int(drop.transaction_id.dropna().duplicated().sum()),
        "invalid_card_number": int((~drop.card_number.map(luhn_valid)).sum()),
    }


def test_malformed_rate_is_honoured_with_every_class_present(
    tmp_path: Path, table: pa.Table
) -> None:
    rate = 0.02
    drops = write_landing_drops(table, tmp_path, "csv", rate, seed=3)
    written = pd.concat([read_drop_as_text(p) for p in drops], ignore_index=True)
    assert len(written) == drops.rows_written
    assert drops.malformed_total == pytest.approx(rate * table.num_rows, abs=1)
    assert set(drops.malformed_counts) == set(MALFORMED_CLASSES)
    found = classify_malformed(written)
    for name in MALFORMED_CLASSES:
        assert drops.malformed_counts[name] > 0, name
        assert found[name] == drops.malformed_counts[name], name
    # Planted fraud and AML rows are never spoiled.
    assert written.fraud_scenario.notna().sum() == table["fraud_scenario"].drop_null().length()
    # No helper column leaks into the drop.
    assert list(written.columns) == list(LANDING_COLUMNS)


def test_without_malformed_rate_every_row_is_clean(tmp_path: Path, table: pa.Table) -> None:
    drops = write_landing_drops(table, tmp_path, "csv", 0.0, seed=3)
    written = pd.concat([read_drop_as_text(p) for p in drops], ignore_index=True)
    assert drops.malformed_total == 0
    assert classify_malformed(written) == dict.fromkeys(MALFORMED_CLASSES, 0)
    assert written.timestamp.str.match(ISO_UTC).all()


# --- files ------------------------------------------------------------------------


def test_one_drop_per_day_sorted_by_time(tmp_path: Path, table: pa.Table) -> None:
    drops = write_landing_drops(table, tmp_path, "csv")
    days = [CONFIG.start_date + dt.timedelta(days=d) for d in range(CONFIG.days)]
    assert [p.name for p in drops] == [f"transactions_{d:%Y-%m-%d}.csv" for d in days]
    for path, day in zip(drops, days, strict=True):
        rows = read_drop_as_text(path)
        assert rows.timestamp.str.startswith(f"{day:%Y-%m-%d}T").all()
        assert rows.timestamp.is_monotonic_increasing
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in drops]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_other_formats_hold_the_same_rows(tmp_path: Path, table: pa.Table, fmt: str) -> None:
    drops = write_landing_drops(table, tmp_path, fmt)
    assert all(p.suffix == f".{fmt}" for p in drops)
    if fmt == "parquet":
        back = pd.concat([pq.read_table(p).to_pandas() for p in drops], ignore_index=True)
    else:
        back = pd.concat([pajson.read_json(p).to_pandas() for p in drops], ignore_index=True)
    assert list(back.columns) == list(LANDING_COLUMNS)
    assert len(back) == table.num_rows
    assert back.transaction_id.tolist() == table["transaction_id"].to_pylist()
    assert back.amount.astype(float).sum() == pytest.approx(sum(table["amount"].to_pylist()))


def test_a_failed_write_leaves_no_partial_file(
    tmp_path: Path, table: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = writer_module.pacsv.write_csv
    calls = []

    def fail_on_third_day(data: pa.Table, path: Path) -> None:
        calls.append(path)
        real_write(data.slice(0, 10), path)  # a partial file on disk, then a crash
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(writer_module.pacsv, "write_csv", fail_on_third_day)
    with pytest.raises(OSError, match="disk full"):
        write_landing_drops(table, tmp_path, "csv")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["transactions_2026-01-01.csv", "transactions_2026-01-02.csv"]


# --- CLI --------------------------------------------------------------------------


def test_cli_writes_day_files_into_the_workspace_landing_zone(
    workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "generate",
            "--workdir",
            str(workspace.root),
            "--transactions",
            "4000",
            "--days",
            "5",
            "--start-date",
            "2026-03-01",
            "--malformed-rate",
            "0.01",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in workspace.landing.iterdir())
    assert names == [f"transactions_2026-03-0{d}.csv" for d in range(1, 6)]
    out = capsys.readouterr().out
    assert "4,000" in out and "card_testing" in out and "malformed rows" in out
    assert str(workspace.landing) in out.replace("\n", "")


def test_cli_points_out_drops_left_from_an_older_run(
    workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["generate", "--workdir", str(workspace.root), "--transactions", "3000"]
    assert main([*base, "--days", "4"]) == 0
    capsys.readouterr()
    assert main([*base, "--days", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 other drop(s)" in out and "transactions_2026-01-03.csv" in out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--start-date", "01/03/2026", "YYYY-MM-DD"),
        ("--malformed-rate", "1.5", "malformed-rate"),
        ("--transactions", "0", "transactions"),
        ("--transactions", "10", "too few"),
        ("--terminals", "12", "terminals must be at least"),
    ],
)
def test_cli_rejects_bad_options_with_a_clear_message(
    workspace, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    code = main(["generate", "--workdir", str(workspace.root), "--days", "3", option, value])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not workspace.landing.exists() or not any(workspace.landing.iterdir())
