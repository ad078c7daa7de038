"""Card numbers in any text field, in file names, headers and error paths: never stored or shown.

Issue 11 item 2. The rule (docs/CONTRACTS.md): every Luhn-valid 13-19 digit
number (also grouped by spaces or dashes) in any text field is masked before
anything is stored; in free text (merchant_category, fraud_scenario) the row
is kept, in every other field the row is quarantined as ``card_number_in_text:<column>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from fixtures.landing import curated, quarantined, row
from fixtures.pan_scan import clear_card_numbers

from pipelines.compliance.carddata import (
    is_sensitive_auth_field,
    luhn_valid,
    mask,
    mask_card_numbers,
)
from pipelines.core import schema
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import IngestError, ingest
from pipelines.data.ingest.errors import MaskedIngestFailure

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXT_FIELDS = [c for c in schema.LANDING_COLUMNS if c != "card_number"]
KEPT_FIELDS = {"merchant_category", "fraud_scenario"}  # masked in place, row curated


def with_check_digit(payload: str) -> str:
    """``payload`` plus the digit that makes it pass the Luhn check."""
    digit = next(d for d in "0123456789" if luhn_valid(payload + d))
    return payload + digit


# One distinct card per field, so a finding says which field leaked; lengths 13 to 19.
CARDS = {field: with_check_digit(f"4{index:02d}" + "7" * (9 + index % 7))
         for index, field in enumerate(TEXT_FIELDS)}
GROUPED = {"customer_id": " ", "merchant_category": "-", "amount": " "}  # also grouped forms
CARD_COLUMN = with_check_digit("55555555555544")  # the card column itself (tokenised)
IN_FILE_NAME = with_check_digit("601111111111111")
IN_RAGGED_ROW = with_check_digit("3530111333300")
IN_HEADERLESS = with_check_digit("401288888888188")
IN_FORBIDDEN = with_check_digit("510510510510510")
IN_UNMAPPED = with_check_digit("400005665566555")
ALL = [*CARDS.values(), CARD_COLUMN, IN_FILE_NAME, IN_RAGGED_ROW, IN_HEADERLESS, IN_FORBIDDEN,
       IN_UNMAPPED]


def grouped(card: str, separator: str) -> str:
    return separator.join(card[i:i + 4] for i in range(0, len(card), 4))


def base_row(tx: str) -> dict[str, str]:
    return row(tx, amount="10.00", card_number=CARD_COLUMN, currency="USD", country="US",
               note="")


def csv_text(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    return "\n".join([",".join(header)] + [",".join(r[c] for c in header) for r in rows]) + "\n"


def fraudops(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli.main", *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)


def test_no_clear_card_number_anywhere_after_ingesting_one_in_every_field(tmp_path):
    rows = [base_row("clean")]
    for field, card in CARDS.items():
        value = grouped(card, GROUPED[field]) if field in GROUPED else card
        if field in KEPT_FIELDS:
            value = f"paid with {value} at the till"
        rows.append({**base_row(f"tx-{field}"), field: value})
    rows.append({**base_row("tx-note"), "note": f"card {IN_UNMAPPED}"})
    text = csv_text(rows) + f"ragged,{IN_RAGGED_ROW},only three\n"
    landing = tmp_path / "landing"
    landing.mkdir()
    drop = landing / f"drop-{IN_FILE_NAME}.csv"
    drop.write_text(text)
    headerless = landing / "headerless.csv"
    headerless.write_text(f"t9,2024-03-01T10:00:00Z,C1,T1,5.00,{IN_HEADERLESS}\n")
    forbidden = landing / "forbidden.csv"
    forbidden.write_text(f"transaction_id,timestamp,customer_id,terminal_id,amount,CVVNumber\n"
                         f"f1,2024-03-01T10:00:00Z,C1,T1,5.00,{IN_FORBIDDEN}\n")
    ws = tmp_path / "ws"

    ran = [fraudops("ingest", str(drop), "--workdir", str(ws)),
           fraudops("ingest", str(headerless), "--workdir", str(ws)),
           fraudops("ingest", str(forbidden), "--workdir", str(ws)),
           fraudops("ingest", str(drop), "--workdir", str(ws)),  # again: duplicates path
           fraudops("query", "SELECT * FROM quarantine", "--workdir", str(ws)),
           fraudops("query", "SELECT * FROM transactions", "--format", "csv", "--workdir",
                    str(ws)),
           fraudops("audit", "list", "--json", "--workdir", str(ws))]

    assert [r.returncode for r in ran] == [0, 2, 2, 0, 0, 0, 0], [r.stderr for r in ran]
    output = "\n".join(r.stdout + r.stderr for r in ran)
    assert "Traceback" not in output
    assert "first line is not a header" in ran[1].stderr
    assert "'CVVNumber'" in ran[2].stderr
    assert clear_card_numbers(ws, ALL, output) == []
    # The rule itself: free text kept masked, anything else quarantined with the reason.
    workspace = Workspace.open(ws)
    reasons = {r["transaction_id"]: r["reason"] for r in quarantined(workspace).to_pylist()}
    stored = curated(workspace).to_pylist()
    kept = {r["transaction_id"]: r for r in stored}
    for field, card in CARDS.items():
        if field in KEPT_FIELDS:
            assert kept[f"tx-{field}"][field] == f"paid with {mask(card)} at the till"
        elif field == "transaction_id":
            assert reasons[mask(card)] == "card_number_in_text:transaction_id"
        else:
            assert reasons[f"tx-{field}"] == f"card_number_in_text:{field}", field
    assert set(kept) == {"clean", "tx-note", *(f"tx-{f}" for f in KEPT_FIELDS)}
    assert {r["source_file"] for r in stored} == {str(drop).replace(IN_FILE_NAME,
                                                                     mask(IN_FILE_NAME))}
    refusals = [json.loads(line) for line in ran[6].stdout.splitlines()
                if '"ingest.refused"' in line]
    assert len(refusals) == 2  # the header-less and the CVV file, both audited


@pytest.mark.parametrize("header", ["CVVNumber", "cardPin", "security_code", "Security Code",
                                    "PIN block", "pin", "track2", "Track Data", "cvc2", "CID",
                                    "card_verification_value", "CVV2"])
def test_sensitive_authentication_headers_refuse_the_whole_file_however_spelt(
        workspace, tmp_path, header):
    drop = tmp_path / "drop.csv"
    drop.write_text(f"transaction_id,timestamp,customer_id,terminal_id,amount,{header}\n"
                    "a,2024-03-01T10:00:00Z,C1,T1,5.00,123\n")
    with pytest.raises(IngestError, match="refused the whole file") as refused:
        ingest(workspace, [drop])
    assert repr(header) in str(refused.value) and "123" not in str(refused.value)
    assert not workspace.curated.exists() and not workspace.quarantine.exists()


@pytest.mark.parametrize("header", ["shipping", "spin_rate", "opinion", "decided", "pincode",
                                    "tracking_number", "description"])
def test_ordinary_headers_that_contain_those_letters_are_not_refused(workspace, tmp_path,
                                                                     header):
    drop = tmp_path / "drop.csv"
    drop.write_text(f"transaction_id,timestamp,customer_id,terminal_id,amount,{header}\n"
                    "a,2024-03-01T10:00:00Z,C1,T1,5.00,x\n")
    assert ingest(workspace, [drop]).rows_curated == 1
    assert not is_sensitive_auth_field(header)


def test_an_unexpected_failure_never_carries_a_card_number_out(workspace, tmp_path,
                                                                monkeypatch):
    from pipelines.data.ingest import run

    card = CARDS["merchant_category"]

    def broken(*args, **kwargs):
        try:
            raise KeyError(f"lookup of {card}")
        except KeyError as inner:
            raise ValueError(f"cannot classify row holding {grouped(card, ' ')}") from inner

    monkeypatch.setattr(run, "classify", broken)
    drop = tmp_path / "drop.csv"
    drop.write_text(csv_text([base_row("a")]))
    with pytest.raises(MaskedIngestFailure) as failure:
        ingest(workspace, [drop])
    shown = "".join(traceback.format_exception(failure.value))
    assert clear_card_numbers(tmp_path / "none", [card], shown) == []
    assert mask(card) in shown and "ValueError" in shown and "KeyError" in shown


def test_the_stream_reads_through_the_same_masking(tmp_path):
    from pipelines.serving.stream.core import raw_table
    from pipelines.serving.stream.source import RawRecord

    free_text = f"note {CARDS['fraud_scenario']}"
    records = [RawRecord(1, {**base_row("s1"), "fraud_scenario": free_text}),
               RawRecord(2, {**base_row("s2"), "customer_id": CARDS["customer_id"]})]
    table = raw_table(records, "stream", {})
    scenario = table.column("fraud_scenario").to_pylist()[0]
    assert scenario == f"note {mask(CARDS['fraud_scenario'])}"
    assert table.column("customer_id").to_pylist()[1] == mask(CARDS["customer_id"])
    assert table.column("_read_reason").to_pylist() == [None, "card_number_in_text:customer_id"]
    outside_card_column = table.drop_columns(["card_number"]).to_pylist()  # tokenised later
    assert clear_card_numbers(tmp_path, ALL, json.dumps(outside_card_column)) == []


def test_masking_finds_grouped_numbers_next_to_other_digits_but_not_inside_tokens():
    visa = "4111111111111111"
    assert mask_card_numbers(f"ref 1234 {grouped(visa, ' ')} end") == f"ref 1234 {mask(visa)} end"
    assert mask_card_numbers(f"a-{grouped(visa, '-')}-b") == f"a-{mask(visa)}-b"
    for untouched in (f"tx{visa}", "4111111111111112", "TX20260101-0000000", "12345678901"):
        assert mask_card_numbers(untouched) == untouched
    lengths = {len(card) for card in CARDS.values()}
    assert min(lengths) == 13 and max(lengths) == 19
    assert all(np.array([luhn_valid(c) for c in ALL]))


@pytest.mark.parametrize("where", [0, 777, 1499])
def test_a_card_among_many_values_is_found_wherever_it_is(workspace, tmp_path, where):
    card = CARDS["customer_id"]
    # Values long enough to be screened (13+ bytes), with digits that are not cards.
    rows = [base_row(f"t{i}") | {"customer_id": f"customer-{i:010d}",
                                 "merchant_category": f"category {i:08d} 1234 5678"}
            for i in range(1500)]
    rows[where]["customer_id"] = card
    rows[(where + 1) % 1500]["merchant_category"] = f"{grouped(card, ' ')}"
    drop = tmp_path / "many.csv"
    drop.write_text(csv_text(rows))

    report = ingest(workspace, [drop])

    assert report.quarantine_reasons == {"card_number_in_text:customer_id": 1}
    assert mask(card) in curated(workspace).column("merchant_category").to_pylist()
    assert clear_card_numbers(workspace.root, [card]) == []
