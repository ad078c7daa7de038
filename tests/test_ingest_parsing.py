"""Strict, counted parsing (issue 14 item 1): nothing lost, nothing guessed, nothing crashes.

Each test is one case from the issue; each failed on the reader as it was
before (rows lost, tracebacks, lenient timestamps and numbers, quarantine
doubled by a second path).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
from fixtures.landing import HEADER, curated, quarantined, row, write_csv

from pipelines.cli.main import main as cli_main
from pipelines.data.ingest import IngestError, ingest, sources

GOOD = "2024-03-01T10:00:00Z,C1,T1,5.00"


def ids(ws) -> list[str]:
    return sorted(curated(ws).column("transaction_id").to_pylist())


def bad_lines(ws) -> list[tuple[str, int, int]]:
    return sorted((r["reason"], r["source_line"], r["source_line_end"])
                  for r in quarantined(ws).to_pylist())


def test_an_unterminated_quote_loses_no_row_after_it(workspace, tmp_path):
    drop = tmp_path / "quote.csv"
    drop.write_text(f'{HEADER}\na,{GOOD}\nb,"{GOOD}\nc,{GOOD}\nd,{GOOD}\ne,{GOOD}\n')

    report = ingest(workspace, [drop])

    assert ids(workspace) == ["a", "c", "d", "e"]
    assert bad_lines(workspace) == [("malformed_row", 3, 3)]
    (source,) = report.sources
    assert (source.lines, source.lines_accounted, report.rows_read) == (6, 6, 5)
    assert report.balanced


def test_a_ragged_row_with_a_quoted_line_break_quarantines_each_line_it_covers(workspace,
                                                                             tmp_path):
    drop = tmp_path / "ragged.csv"
    drop.write_text(f'{HEADER}\na,{GOOD}\nb,{GOOD},"extra\nfield"\nc,{GOOD}\nd,only\n')

    report = ingest(workspace, [drop])

    assert ids(workspace) == ["a", "c"]
    assert bad_lines(workspace) == [("malformed_row", 3, 3), ("malformed_row", 4, 4),
                                    ("malformed_row", 6, 6)]
    assert report.sources[0].lines == report.sources[0].lines_accounted == 6
    assert report.balanced


def test_a_quoted_line_break_in_a_well_formed_row_is_parsed_with_its_span(workspace, tmp_path):
    source = write_csv(tmp_path / "note.csv", [
        row("a"), row("b", merchant_category="line one\nline two"), row("c")])

    report = ingest(workspace, [source])

    records = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    assert records["b"]["merchant_category"] == "line one\nline two"
    assert set(records) == {"a", "b", "c"} and report.rows_read == 3
    assert report.sources[0].lines == 5 and report.balanced


def test_cr_only_line_endings_parse(workspace, tmp_path):
    drop = tmp_path / "mac.csv"
    drop.write_bytes(f"{HEADER}\ra,{GOOD}\rb,{GOOD}\r".encode())

    report = ingest(workspace, [drop])

    assert ids(workspace) == ["a", "b"] and report.balanced


def test_mixed_line_endings_keep_exact_line_numbers(workspace, tmp_path):
    drop = tmp_path / "mixed.csv"
    text = (f"{HEADER}\r\na,{GOOD}\nb,{GOOD}\rbad,{GOOD},x\r\n"
            f'c,"2024-03-01T10:00:00Z",C1,T1,"5.00"\r\n\r\n'
            f'd,{GOOD}\n')
    drop.write_bytes(text.encode())

    report = ingest(workspace, [drop])

    assert ids(workspace) == ["a", "b", "c", "d"]
    assert bad_lines(workspace) == [("malformed_row", 4, 4)]
    assert report.sources[0].lines == 7 and report.balanced


def test_a_200_kb_field_with_a_quoted_line_break_parses(workspace, tmp_path):
    big = "x" * 100_000 + "\n" + "y" * 100_000
    source = write_csv(tmp_path / "big.csv", [row("a"), row("b", fraud_scenario=big)])

    report = ingest(workspace, [source])

    records = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    assert records["b"]["fraud_scenario"] == big
    assert report.rows_curated == 2 and report.balanced


def test_reconciliation_fails_loudly_when_the_parser_drops_a_row(workspace, tmp_path,
                                                                 monkeypatch):
    real = sources._read_csv_exact

    def drops_the_last_row(text, headers, total):
        parsed = real(text, headers, total)
        kept = {h: c.slice(0, len(c) - 1) for h, c in parsed.columns.items()}
        return sources._Parsed(parsed.headers, kept, parsed.lines[:-1], parsed.line_ends[:-1],
                               parsed.malformed[:-1], parsed.physical_lines,
                               parsed.accounted_lines - 1)

    monkeypatch.setattr(sources, "_read_csv_exact", drops_the_last_row)
    drop = tmp_path / "blank.csv"
    drop.write_text(f"{HEADER}\na,{GOOD}\n\nb,{GOOD}\n")

    with pytest.raises(IngestError, match=r"accounted for 3 of the file's 4 lines"):
        ingest(workspace, [drop])
    assert not workspace.curated.exists()


@pytest.mark.parametrize("stamp", [
    "2024-03-01T10:00:00 BST", "2024-03-01T10:00:00 CST", "2024-03-01T10:00:00 IST",
    "2024-03-01 10:00:00 UTC", "2024-03-01T10:00:00 Europe/London",
    "2024-03-01T10:00:00+25:00", "2024-03-01T10:00:00+99:99", "2024-03-01T10:00:00+14:30",
    "2024-03-01T10:00:00z", "2024-3-1T10:00:00Z", "1_709_287_200", "1.7e9", "01/03/2024 10:00",
])
def test_timestamps_outside_the_documented_formats_are_quarantined(workspace, tmp_path, stamp):
    drop = write_csv(tmp_path / "t.csv", [row("a", timestamp=stamp), row("b")])
    report = ingest(workspace, [drop])
    assert report.quarantine_reasons == {"bad_timestamp": 1}


@pytest.mark.parametrize(("stamp", "instant"), [
    ("2024-03-01T10:00:00Z", "2024-03-01T10:00:00"),
    ("2024-03-01T10:00:00+14:00", "2024-02-29T20:00:00"),
    ("2024-03-01T10:00:00-14:00", "2024-03-02T00:00:00"),
    ("2024-03-01T10:00:00+0530", "2024-03-01T04:30:00"),
    ("2024-03-01 10:00:00.25-05", "2024-03-01T15:00:00.250000"),
    ("2024-03-01T10:00", "2024-03-01T10:00:00"),  # no offset: UTC
    ("2024-03-01", "2024-03-01T00:00:00"),
    ("1709287200", "2024-03-01T10:00:00"),
    ("1709287200.5", "2024-03-01T10:00:00.500000"),
])
def test_documented_timestamp_formats_are_read_exactly(workspace, tmp_path, stamp, instant):
    ingest(workspace, [write_csv(tmp_path / "t.csv", [row("a", timestamp=stamp)])])
    (stored,) = curated(workspace).column("timestamp").to_pylist()
    assert stored == datetime.fromisoformat(instant).replace(tzinfo=UTC)


@pytest.mark.parametrize("amount", ["1_000", "1e3", "0x10", "inf", "nan", "1,000", "12.5.1",
                                    "１０"])
def test_numbers_accept_plain_decimal_notation_only(workspace, tmp_path, amount):
    drop = write_csv(tmp_path / "a.csv", [row("a", amount=amount), row("b", amount=".5"),
                                          row("c", amount="+7")])
    report = ingest(workspace, [drop])
    assert report.quarantine_reasons == {"bad_amount": 1}
    assert sorted(curated(workspace).column("amount").to_pylist()) == [0.5, 7.0]


@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\r", "\n\n"])
def test_a_header_only_file_is_zero_rows_with_or_without_a_final_newline(workspace, tmp_path,
                                                                         ending):
    drop = tmp_path / "empty.csv"
    drop.write_bytes(f"{HEADER}{ending}".encode())
    report = ingest(workspace, [drop])
    assert (report.rows_read, report.balanced) == (0, True)


def test_a_header_less_file_is_a_clear_error_naming_the_file(workspace, tmp_path, capsys):
    drop = tmp_path / "noheader.csv"
    drop.write_text(f"a,{GOOD}\nb,{GOOD}\n")

    code = cli_main(["ingest", str(drop), "--workdir", str(workspace.root)])

    err = capsys.readouterr().err
    assert code == 2
    assert "noheader.csv: the first line is not a header" in err and "Traceback" not in err
    assert "2024-03-01" not in err  # the row's values are not echoed


def test_quarantine_is_idempotent_by_content_not_path(workspace, tmp_path):
    first = write_csv(tmp_path / "in" / "drop.csv",
                      [row("a"), row("b", amount="-1"), row("c", timestamp="never")])
    again = tmp_path / "elsewhere" / "renamed.csv"
    again.parent.mkdir()
    shutil.copy(first, again)

    ingest(workspace, [first])
    report = ingest(workspace, [again])

    assert quarantined(workspace).num_rows == 2
    assert (report.rows_quarantined, report.duplicates_quarantined) == (0, 2)
    assert report.sources[0].sha256 == ingest(workspace, [first]).sources[0].sha256


def test_the_exact_reader_agrees_with_the_fast_one_on_a_clean_file(tmp_path):
    rng = np.random.default_rng(3)
    rows = [row(f"t{i}", amount=f"{rng.uniform(1, 100):.2f}",
                merchant_category=rng.choice(["a,b", 'say "hi"', "", "plain"]))
            for i in range(200)]
    data = write_csv(tmp_path / "clean.csv", rows).read_bytes()
    headers = list(rows[0])
    fast = sources._read_csv_fast(data, headers, sources.physical_lines(data))
    exact = sources._read_csv_exact(data.decode(), headers, sources.physical_lines(data))
    assert fast is not None
    for name in headers:
        assert fast.columns[name].to_pylist() == exact.columns[name].to_pylist(), name
    assert fast.lines.tolist() == exact.lines.tolist() == list(range(2, 202))
