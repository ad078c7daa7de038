"""Regulatory reports on crafted cases with known answers.

CTR: "more than $10,000" per person per business day, aggregated across
transactions and terminals, business-day boundaries; structuring flags;
SAR candidates and their 30/60-day due dates, never a clear card number;
the model card's sections and PSI; fraud statistics; files written atomically
and audited.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lineage import build_trained_workspace, curated_row, write_curated

from pipelines.analytics.reports import ReportError, build, generate
from pipelines.analytics.reports.ctr import (
    CtrRules,
    StructuringRule,
    aggregate_ctr,
    compute_ctr,
    structuring_flags,
)
from pipelines.analytics.reports.drift import band, psi, psi_from_counts
from pipelines.analytics.reports.model_card import SECTION_TITLES
from pipelines.analytics.reports.output import reports_root
from pipelines.analytics.reports.sar import filing_due
from pipelines.cli.main import main
from pipelines.compliance.audit import list_entries
from pipelines.compliance.carddata import CardDataError, find_card_numbers
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.serving.alerts import CaseQueue

MASKED = "453201******0366"
CLEAR_PAN = "4532015112830366"  # Luhn-valid test number


def pdf_pages(path: Path) -> int:
    """Page objects in a PDF file, after checking it is one (header and end marker)."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", data))


def cash(*transactions: tuple[str, float], customer: str = "C1", channel: str = "card_present",
         terminals: tuple[str, ...] = ("T1",)) -> pd.DataFrame:
    """Cash rows for the pure CTR functions: ``(UTC timestamp, USD amount)`` pairs."""
    return pd.DataFrame([{
        "transaction_id": f"TX{i}", "timestamp": pd.Timestamp(ts),
        "customer_id": customer, "terminal_id": terminals[i % len(terminals)],
        "amount_usd": amount, "channel": channel, "card_masked": MASKED,
    } for i, (ts, amount) in enumerate(transactions)])


# --- CTR: the threshold and aggregation -----------------------------------------------------
@pytest.mark.parametrize(("amounts", "reportable"), [
    ([10_000.00], False),  # exactly $10,000 is not "more than"
    ([9_999.99], False),
    ([10_000.01], True),
    ([6_000.00, 4_000.00], False),  # several summing to exactly the threshold
    ([6_000.00, 4_000.01], True),
    ([3_000.00, 3_000.00, 3_000.00, 1_000.01], True),
])
def test_ctr_is_more_than_10000_per_person_per_day(amounts: list[float], reportable: bool):
    rows = cash(*[(f"2026-03-03T{9 + i:02d}:00:00Z", a) for i, a in enumerate(amounts)])
    result = aggregate_ctr(rows, CtrRules())
    assert (len(result) == 1) is reportable
    if reportable:
        assert result.iloc[0]["cash_total_usd"] == pytest.approx(sum(amounts))
        assert result.iloc[0]["transactions"] == len(amounts)


def test_ctr_aggregates_across_terminals_but_not_across_people():
    rows = cash(("2026-03-03T09:00:00Z", 6_000.0), ("2026-03-03T15:00:00Z", 4_500.0),
                terminals=("T1", "T2"))
    other = cash(("2026-03-03T10:00:00Z", 6_000.0), customer="C2")
    result = aggregate_ctr(pd.concat([rows, other]), CtrRules())
    assert list(result["customer_id"]) == ["C1"]
    first = result.iloc[0]
    assert (first["terminals"], first["terminal_ids"]) == (2, "T1, T2")
    assert first["filing_due"] == date(2026, 3, 18)  # 15 days after the business day


@pytest.mark.parametrize(("times", "rules", "business_day"), [
    # Midnight splits UTC days: one second apart, two business days.
    (["2026-03-03T23:59:59Z", "2026-03-04T00:00:00Z"], CtrRules(), None),
    # A 17:00 cut-off books 17:00 onwards on the next day...
    (["2026-03-03T17:00:00Z", "2026-03-04T09:00:00Z"], CtrRules(cutoff_hour=17),
     date(2026, 3, 4)),
    # ...but 16:59:59 is still the same day.
    (["2026-03-03T16:59:59Z", "2026-03-04T09:00:00Z"], CtrRules(cutoff_hour=17), None),
    # Saturday is booked on Monday with the following Monday cash.
    (["2026-03-07T10:00:00Z", "2026-03-09T10:00:00Z"], CtrRules(), date(2026, 3, 9)),
    (["2026-03-07T10:00:00Z", "2026-03-09T10:00:00Z"],
     CtrRules(weekends_roll_forward=False), None),
    # 03:30 UTC on the 4th is 22:30 on the 3rd in New York.
    (["2026-03-03T15:00:00Z", "2026-03-04T03:30:00Z"],
     CtrRules(timezone="America/New_York"), date(2026, 3, 3)),
    (["2026-03-03T15:00:00Z", "2026-03-04T03:30:00Z"], CtrRules(), None),
])
def test_business_day_boundaries(times: list[str], rules: CtrRules, business_day: date | None):
    result = aggregate_ctr(cash(*[(t, 6_000.0) for t in times]), rules)
    if business_day is None:
        assert result.empty
    else:
        assert list(result["business_day"]) == [business_day]


# --- structuring ------------------------------------------------------------------------------
T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def _at(offset: timedelta) -> str:
    return (T0 + offset).isoformat()


@pytest.mark.parametrize(("transactions", "rule", "episodes"), [
    ([(timedelta(0), 9_500.0), (timedelta(days=2), 9_500.0)], StructuringRule(), [2]),
    # Inside the window only up to exactly 3 days apart.
    ([(timedelta(0), 9_500.0), (timedelta(days=3), 9_500.0)], StructuringRule(), [2]),
    ([(timedelta(0), 9_500.0), (timedelta(days=3, seconds=1), 9_500.0)], StructuringRule(), []),
    # The band is [8,000, 10,000): 9,999.99 and 8,000.00 are in it...
    ([(timedelta(0), 9_999.99), (timedelta(hours=3), 8_000.00)], StructuringRule(), [2]),
    # ...10,000.00 (a CTR on its own terms) and 7,999.99 are not.
    ([(timedelta(0), 10_000.00), (timedelta(hours=3), 9_000.00)], StructuringRule(), []),
    ([(timedelta(0), 7_999.99), (timedelta(hours=3), 9_000.00)], StructuringRule(), []),
    # The total must exceed $10,000: a lower band makes two 4,500s legal.
    ([(timedelta(0), 4_500.0), (timedelta(hours=1), 4_500.0)],
     StructuringRule(band_low_usd=4_000.0), []),
    # Overlapping windows merge into one episode of three.
    ([(timedelta(0), 9_100.0), (timedelta(days=2), 9_200.0), (timedelta(days=4), 9_300.0)],
     StructuringRule(), [3]),
    ([(timedelta(0), 9_500.0), (timedelta(days=1), 9_500.0)],
     StructuringRule(min_transactions=3), []),
])
def test_structuring_flags(transactions, rule: StructuringRule, episodes: list[int]):
    rows = cash(*[(_at(offset), amount) for offset, amount in transactions])
    found = structuring_flags(rows, rule)
    assert [e["transactions"] for e in found] == episodes


def test_structuring_rule_rejects_nonsense():
    with pytest.raises(ValueError, match="band"):
        StructuringRule(band_low_usd=10_000, band_high_usd=9_000)
    with pytest.raises(ValueError, match="min_transactions"):
        StructuringRule(min_transactions=1)


# --- CTR and SAR against a workspace ----------------------------------------------------------
def _cash_row(tid: str, ts: str, customer: str, amount: float, **extra) -> dict:
    return curated_row(tid, ts, customer, amount, **{"is_cash": True, "card_masked": MASKED,
                                                     **extra})


def _aml_workspace(ws: Workspace) -> None:
    write_curated(ws, [
        _cash_row("A1", "2026-03-03T09:00:00Z", "C1", 6_000.0, terminal_id="T1"),
        # An ATM moves cash even when the flag is false.
        _cash_row("A2", "2026-03-03T15:00:00Z", "C1", 4_500.0, terminal_id="T2",
                  channel="atm", is_cash=False),
        # Not cash: never in a CTR whatever the amount.
        curated_row("B1", "2026-03-03T10:00:00Z", "C2", 20_000.0, channel="ecommerce"),
        # 9,200 EUR is exactly $10,000 at the reference rate (0.92): not reportable.
        _cash_row("E1", "2026-03-04T10:00:00Z", "C3", 9_200.0, currency="EUR"),
        _cash_row("E2", "2026-03-04T10:00:00Z", "C5", 9_300.0, currency="EUR"),
        # A structurer: two deposits just under the threshold a day apart.
        _cash_row("S1", "2026-03-04T11:00:00Z", "C4", 9_400.0),
        _cash_row("S2", "2026-03-05T11:00:00Z", "C4", 9_300.0),
        curated_row("N1", "2026-03-05T12:00:00Z", "C6", 25.0),
    ])


def test_ctr_report_reads_cash_from_the_lake(workspace: Workspace):
    _aml_workspace(workspace)
    result = compute_ctr(workspace, date(2026, 3, 1), date(2026, 3, 6))
    by_customer = result.reportable.set_index("customer_id")
    assert sorted(by_customer.index) == ["C1", "C5"]
    assert by_customer.loc["C1", "atm_cash_out_usd"] == 4_500.0
    assert by_customer.loc["C5", "cash_total_usd"] == pytest.approx(9_300.0 / 0.92, abs=0.01)
    assert [e["customer_id"] for e in result.structuring] == ["C4"]


def test_ctr_report_files_html_pdf_and_audit(workspace: Workspace):
    _aml_workspace(workspace)
    written = generate(workspace, "ctr", date(2026, 3, 1), date(2026, 3, 6), actor="officer")

    assert written.directory.parent == reports_root(workspace) / "ctr"
    rows = pd.read_csv(written.directory / "ctr.csv")
    assert sorted(rows["customer_id"]) == ["C1", "C5"]
    assert "Currency Transaction Report" in written.html.read_text()
    assert pdf_pages(written.pdf) >= 1
    manifest = json.loads((written.directory / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"report.json", "report.html", "report.pdf", "ctr.csv"}
    (entry,) = list_entries(workspace, action="report.generate")
    assert entry["actor"] == "officer"
    assert entry["subject"] == f"reports/ctr/{written.run_id}"
    assert entry["details"]["files"] == written.files


def test_filing_due_dates():
    assert filing_due(date(2026, 3, 1), identified=True) == date(2026, 3, 31)
    assert filing_due(date(2026, 3, 1), identified=False) == date(2026, 4, 30)
    assert filing_due(datetime(2026, 12, 15, 23, 59, tzinfo=UTC), True) == date(2027, 1, 14)


def _alert(tid: str, card: str, ts: str, score: float, amount: float, reasons=()) -> dict:
    return {"transaction_id": tid, "card_id": card, "terminal_id": "T1", "amount": amount,
            "tx_timestamp": ts, "score": score, "severity": "high" if score >= 0.9 else "medium",
            "model_version": "1", "reasons": list(reasons)}


def _sar_workspace(ws: Workspace) -> CaseQueue:
    _aml_workspace(ws)
    write_curated(ws, [
        curated_row("F1", "2026-03-03T08:00:00Z", "C7", 950.0, card_masked=MASKED,
                    channel="ecommerce"),
        curated_row("F2", "2026-03-03T08:05:00Z", "C7", 990.0, card_masked=MASKED),
        curated_row("H1", "2026-03-04T08:00:00Z", "C8", 3_000.0),
        curated_row("M1", "2026-03-04T09:00:00Z", "C9", 40.0),
        curated_row("U1", "2026-03-04T09:30:00Z", "C10", 700.0),
    ], ingestion_id="ing-second")
    queue = CaseQueue(ws.cases_db)
    first = queue.add_alert(_alert("F1", "C7", "2026-03-03T08:00:00+00:00", 0.8, 950.0,
                                   ["first transaction in FR on this card"]))
    queue.add_alert(_alert("F2", "C7", "2026-03-03T08:05:00+00:00", 0.7, 990.0),
                    grouped_into=first)
    queue.close(1, "escalate_sar", actor="investigator-ann")
    queue.add_alert(_alert("H1", "C8", "2026-03-04T08:00:00+00:00", 0.95, 3_000.0))  # high
    queue.add_alert(_alert("M1", "C9", "2026-03-04T09:00:00+00:00", 0.6, 40.0))  # medium, open
    queue.add_alert(_alert("U1", "", "2026-03-04T09:30:00+00:00", 0.7, 700.0))
    queue.close(4, "escalate_sar", actor="investigator-ann")
    return queue


def test_sar_candidates_from_escalations_high_alerts_and_structuring(workspace: Workspace):
    queue = _sar_workspace(workspace)
    report = build(workspace, "sar-candidates", date(2026, 3, 1), date(2026, 3, 6))
    candidates = {c["subject"]["customer_id"]: c for c in report.data["candidates"]}

    assert set(candidates) == {"C7", "C8", "C4", None}  # C9's medium open alert is not one
    escalated = candidates["C7"]
    assert escalated["activity"]["transaction_ids"] == ["F1", "F2"]  # the grouped alert too
    assert escalated["activity"]["total_amount_usd"] == 1_940.0
    assert escalated["subject"]["card_masked"] == [MASKED]
    assert "Fraud - account takeover" in escalated["activity"]["categories"]
    assert "investigator-ann" in escalated["narrative"]
    raised = datetime.fromisoformat(queue.show(1).alert["raised_at"])
    assert escalated["detected_at"] == raised.isoformat()
    assert escalated["filing_due"] == (raised.date() + timedelta(days=30)).isoformat()

    unidentified = candidates[None]
    assert unidentified["subject"]["identified"] is False
    assert unidentified["filing_due"] == (raised.date() + timedelta(days=60)).isoformat()

    structuring = candidates["C4"]
    assert structuring["activity"]["categories"] == ["Structuring"]
    assert structuring["detected_at"] == "2026-03-05T11:00:00+00:00"  # pattern completed
    assert structuring["filing_due"] == "2026-04-04"
    assert structuring["activity"]["total_amount_usd"] == 18_700.0


def test_sar_outputs_never_hold_a_clear_card_number(workspace: Workspace):
    _sar_workspace(workspace)
    written = generate(workspace, "sar-candidates", date(2026, 3, 1), date(2026, 3, 6))
    for path in written.directory.iterdir():
        text = path.read_bytes().decode("latin-1")
        assert find_card_numbers(text.rsplit("\nxref\n", 1)[0]) == [], path.name
    assert MASKED in (written.directory / "report.json").read_text()
    assert MASKED in (written.directory / "sar_candidates.csv").read_text()


def test_a_clear_card_number_in_the_data_stops_the_report(workspace: Workspace):
    _sar_workspace(workspace)
    CaseQueue(workspace.cases_db).add_alert(
        _alert("H2", "C8", "2026-03-05T08:00:00+00:00", 0.99, 10.0,
               [f"customer typed {CLEAR_PAN} in the note"]))
    # Refused where the alert leaves the queue for the lake (the export), before any file.
    with pytest.raises(CardDataError, match="contains a card number"):
        generate(workspace, "sar-candidates", date(2026, 3, 1), date(2026, 3, 6))
    folder = reports_root(workspace) / "sar-candidates"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert list_entries(workspace, action="report.generate") == []


def test_a_failing_renderer_leaves_nothing_behind(workspace: Workspace, monkeypatch):
    _aml_workspace(workspace)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pipelines.analytics.reports.output.render_pdf", broken)
    with pytest.raises(OSError, match="disk full"):
        generate(workspace, "ctr", date(2026, 3, 1), date(2026, 3, 6))
    assert list((reports_root(workspace) / "ctr").iterdir()) == []


def test_reports_without_data_say_what_to_do(workspace: Workspace):
    with pytest.raises(ReportError, match="ingest transactions first"):
        build(workspace, "ctr", date(2026, 3, 1), date(2026, 3, 6))
    with pytest.raises(ReportError, match="before"):
        build(workspace, "ctr", date(2026, 3, 6), date(2026, 3, 1))


# --- PSI ----------------------------------------------------------------------------------
def test_psi_matches_a_hand_computation():
    # Four equal training bins, recent shares 0.1/0.2/0.3/0.4:
    # (0.1-0.25)ln(0.1/0.25) + (0.2-0.25)ln(0.2/0.25) + (0.3-0.25)ln(0.3/0.25)
    # + (0.4-0.25)ln(0.4/0.25) = 0.137444 + 0.011157 + 0.009116 + 0.070501
    assert psi_from_counts([25, 25, 25, 25], [10, 20, 30, 40]) == pytest.approx(0.228218,
                                                                              abs=1e-6)
    # Training 0..99 in deciles; recent 0..49 fills the first five bins (0.2 each), the
    # other five are empty (floored at 1e-4); the NaN bin is empty on both sides (0).
    expected = 5 * (0.2 - 0.1) * math.log(0.2 / 0.1) + 5 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert psi(np.arange(100.0), np.arange(50.0)) == pytest.approx(expected, rel=1e-9)
    assert psi(np.arange(100.0), np.arange(100.0)) == 0.0


def test_psi_bins_a_binary_feature_by_its_levels_and_counts_missing_values():
    training = np.array([0.0] * 90 + [1.0] * 10)
    # Shares 0.9/0.1 -> 0.5/0.5: (0.5-0.9)ln(0.5/0.9) + (0.5-0.1)ln(0.5/0.1)
    assert psi(training, np.array([0.0] * 50 + [1.0] * 50)) == pytest.approx(
        -0.4 * math.log(0.5 / 0.9) + 0.4 * math.log(5.0), rel=1e-9)
    with_missing = psi(training, np.array([0.0] * 90 + [np.nan] * 10))
    assert with_missing > 0.25
    assert (band(0.05), band(0.1), band(0.25)) == ("stable", "moderate shift",
                                                   "significant shift")


# --- model card ---------------------------------------------------------------------------
def test_model_card_has_every_section_and_shows_lineage(workspace: Workspace):
    trained = build_trained_workspace(workspace, recent_shift=3.0)
    written = generate(workspace, "model-card", date(2026, 3, 7), date(2026, 3, 7))
    payload = json.loads((written.directory / "report.json").read_text())
    html = written.html.read_text()

    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in html
    assert payload["summary"]["features_significant_drift"] == len(FEATURE_COLUMNS)
    assert payload["summary"]["lineage_verified"] is True
    partitions = pd.read_csv(written.directory / "lineage_feature_partitions.csv")
    assert dict(zip(partitions["dt"], partitions["sha256"], strict=True)) == {
        d: h for d, h in trained.feature_hashes.items() if d != "2026-03-06"}
    approvals = pd.read_csv(written.directory / "approvals.csv")
    assert list(approvals["approver"]) == ["bob"]
    features = pd.read_csv(written.directory / "features.csv")
    assert len(features) == len(FEATURE_COLUMNS) and features["meaning"].str.len().min() > 10
    assert "<svg" in html and "<polyline" in html  # PSI bars and the PR curve
    assert pdf_pages(written.pdf) >= 2


def test_model_card_psi_is_the_drift_of_the_period_against_the_training_rows(
        workspace: Workspace):
    build_trained_workspace(workspace)
    payload = build(workspace, "model-card", date(2026, 3, 7), date(2026, 3, 7)).data
    training = pq.read_table(next(workspace.artifacts.rglob("Preprocess/train/data.parquet")))
    recent = pq.read_table(workspace.features / "dt=2026-03-07" / "data_0.parquet")
    name = FEATURE_COLUMNS[0]
    (first,) = [d for d in payload["drift"] if d["feature"] == name]
    assert first["psi"] == pytest.approx(psi(training[name].to_numpy(), recent[name].to_numpy()),
                                         abs=1e-6)


def test_model_card_for_a_period_without_features_says_so(workspace: Workspace):
    build_trained_workspace(workspace)
    report = build(workspace, "model-card", date(2027, 1, 1), date(2027, 1, 2),
                   model_version="1")
    drift = next(s for s in report.sections if s.title == "Input drift (PSI)")
    assert "cannot be measured" in drift.paragraphs[0]


# --- fraud statistics ----------------------------------------------------------------------
def test_fraud_stats_by_quarter_channel_and_type_with_late_labels(workspace: Workspace):
    write_curated(workspace, [
        curated_row("J1", "2026-01-10T10:00:00Z", "C1", 100.0, channel="ecommerce",
                    is_fraud=1, fraud_scenario="card_testing"),
        curated_row("J2", "2026-01-11T10:00:00Z", "C1", 300.0),
        curated_row("J3", "2026-02-11T10:00:00Z", "C2", 92.0, currency="EUR"),  # $100
        curated_row("A1", "2026-04-02T10:00:00Z", "C2", 50.0, channel="atm"),
    ])
    labels = workspace.labels
    labels.mkdir(parents=True)
    pq.write_table(pa.table({"transaction_id": ["J2"], "is_fraud": pa.array([1], pa.int8()),
                             "label_known_at": [datetime(2026, 2, 1, tzinfo=UTC)]}),
                   labels / "labels.parquet")
    from pipelines.data.lake import refresh_catalog

    refresh_catalog(workspace)
    report = build(workspace, "fraud-stats", date(2026, 1, 1), date(2026, 6, 30))
    quarters = {r["quarter"]: r for r in report.data["by_quarter"]}
    q1 = quarters["2026-Q1"]
    assert (q1["transactions"], q1["fraud_transactions"]) == (3, 2)  # J2 labelled late
    assert q1["value_usd"] == pytest.approx(500.0)
    assert q1["fraud_rate_value_pct"] == pytest.approx(80.0)
    assert quarters["2026-Q2"]["fraud_transactions"] == 0
    tables = {t.name: t for t in report.tables()}
    channels = {tuple(r[:2]): r for r in tables["by_quarter_channel"].rows}
    assert channels[("2026-Q1", "ecommerce")][4] == 1
    types = {tuple(r[:2]): r[2] for r in tables["by_quarter_fraud_type"].rows}
    assert types[("2026-Q1", "card_testing")] == 1
    assert types[("2026-Q1", "(not recorded)")] == 1  # J2: fraud without a scenario

    written = generate(workspace, "fraud-stats", date(2026, 1, 1), date(2026, 6, 30))
    quarter_csv = pd.read_csv(written.directory / "by_quarter.csv")
    assert list(quarter_csv["fraud_transactions"]) == [2, 0]
    assert pdf_pages(written.pdf) >= 1 and "<rect" in written.html.read_text()


def test_fraud_stats_says_when_a_column_is_missing(workspace: Workspace):
    write_curated(workspace, [curated_row("X1", "2026-01-10T10:00:00Z", "C1", 10.0,
                                          channel=None)])
    report = build(workspace, "fraud-stats", date(2026, 1, 1), date(2026, 1, 31))
    channel = next(s for s in report.sections if s.title == "By channel")
    assert "no channel values" in channel.paragraphs[0]
    assert not channel.tables


# --- CLI ----------------------------------------------------------------------------------
def test_report_cli_writes_and_prints_where(workspace: Workspace, capsys):
    _aml_workspace(workspace)
    args = ["report", "ctr", "--from", "2026-03-01", "--to", "2026-03-06",
            "--workdir", str(workspace.root), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["directory"]).is_dir() and result["summary"]["ctr_person_days"] == 2
    assert main([*args[:-1], "--model-version", "1"]) == 2
    assert "model-card report only" in capsys.readouterr().err
    assert main([*args[:-1], "--timezone", "Mars/Olympus"]) == 2
    assert "unknown --timezone" in capsys.readouterr().err


def test_pdf_survives_a_cell_longer_than_a_page(workspace: Workspace):
    from pipelines.analytics.reports.document import Report, Section, Table
    from pipelines.analytics.reports.output import write_report
    from pipelines.analytics.reports.pdf import column_widths

    long_text = "suspicious " * 5_000  # far taller than one page at any width
    table = Table("t", "Long", ["customer_id", "narrative"], [["C1", long_text]])
    report = Report("sar-candidates", "Long narrative", date(2026, 3, 1), date(2026, 3, 1),
                    [Section("Candidates", [], [table])], data={})
    written = write_report(workspace, report)
    assert pdf_pages(written.pdf) >= 1
    assert long_text.strip() in (written.directory / "t.csv").read_text()  # CSV keeps it all
    widths = column_widths(table, 700.0)
    assert sum(widths) == pytest.approx(700.0) and widths[1] > widths[0]
