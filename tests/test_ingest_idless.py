"""Id-less, relative-time data (issue 13 items 2 and 3, ingest side).

Only the timestamp and the amount are required. Without a transaction id each
row gets a stable id derived from its content; missing customer or terminal
ids are stored null; ``--time-origin`` (or ``time_origin`` in the column map)
makes numeric times seconds from that instant; a file none of whose times can
be read fails the ingest instead of curating nothing; zero amounts are valid.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from fixtures.landing import curated, quarantined, row, write_csv

from pipelines.cli.main import build_parser
from pipelines.cli.main import main as cli_main
from pipelines.data.ingest import IngestError, ingest
from pipelines.data.ingest.columns import load_column_map
from pipelines.data.ingest.validation import DERIVED_ID_PREFIX

ORIGIN = datetime(2013, 9, 1, tzinfo=UTC)
ANONYMOUS_MAP = {"Time": "timestamp", "Amount": "amount", "Class": "is_fraud"}


def anonymous_csv(path, rows: list[tuple[str, str, str]]):
    """A file shaped like the public anonymised card data: seconds, amount, label, V1."""
    lines = ["Time,V1,Amount,Class"] + [f"{t},{i * 0.1:.1f},{a},{c}"
                                         for i, (t, a, c) in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [("0", "149.62", "0"), ("0", "2.69", "0"), ("1.5", "0.00", "0"), ("406", "529.00", "1"),
        ("406", "529.00", "1"), ("86400", "-4.50", "0")]


def test_id_less_relative_time_file_is_curated_with_derived_ids_and_null_entities(
        workspace, tmp_path):
    drop = anonymous_csv(tmp_path / "creditcard.csv", ROWS)

    report = ingest(workspace, [drop], ANONYMOUS_MAP, time_origin=ORIGIN)

    records = sorted(curated(workspace).to_pylist(), key=lambda r: (r["timestamp"], r["amount"]))
    assert report.rows_curated == 5 and report.quarantine_reasons == {"negative_amount": 1}
    assert [r["timestamp"] for r in records] == [
        ORIGIN, ORIGIN, ORIGIN + timedelta(seconds=1.5), ORIGIN + timedelta(seconds=406),
        ORIGIN + timedelta(seconds=406)]
    assert 0.0 in [r["amount"] for r in records]  # a card verification, not an error
    assert all(r["customer_id"] is None and r["terminal_id"] is None for r in records)
    ids = [r["transaction_id"] for r in records]
    assert len(set(ids)) == 5 and all(i.startswith(DERIVED_ID_PREFIX) for i in ids)
    # Two identical rows are two transactions: the second copy is numbered.
    assert sum(i.endswith("-1") for i in ids) == 1
    assert [r["is_fraud"] for r in records] == [0, 0, 0, 1, 1]


def test_reingesting_an_id_less_file_from_anywhere_adds_nothing(workspace, tmp_path):
    first = anonymous_csv(tmp_path / "a" / "creditcard.csv", ROWS)
    again = tmp_path / "b" / "copy.csv"
    again.parent.mkdir()
    shutil.copy(first, again)
    ingest(workspace, [first], ANONYMOUS_MAP, time_origin=ORIGIN)
    before = sorted(curated(workspace).column("transaction_id").to_pylist())

    report = ingest(workspace, [again], ANONYMOUS_MAP, time_origin=ORIGIN)
    # A later extract holding the same rows and one more adds only the new one.
    longer = anonymous_csv(tmp_path / "c" / "more.csv", [*ROWS, ("90000", "7.00", "0")])
    more = ingest(workspace, [longer], ANONYMOUS_MAP, time_origin=ORIGIN)

    assert (report.rows_curated, report.duplicates_seen_before) == (0, 5)
    assert report.duplicates_quarantined == 1
    assert (more.rows_curated, more.duplicates_seen_before) == (1, 5)
    after = sorted(curated(workspace).column("transaction_id").to_pylist())
    assert set(before) < set(after) and len(after) == 6


def test_time_origin_from_the_column_map_file_and_the_cli_flag(workspace, tmp_path):
    drop = anonymous_csv(tmp_path / "creditcard.csv", ROWS[:2])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"columns": ANONYMOUS_MAP,
                                   "time_origin": "2013-09-01T00:00:00Z"}))
    assert load_column_map(mapping).time_origin == ORIGIN

    code = cli_main(["ingest", str(drop), "--column-map", str(mapping),
                     "--workdir", str(workspace.root)])
    assert code == 0
    assert set(curated(workspace).column("timestamp").to_pylist()) == {ORIGIN}

    other = tmp_path / "other"
    code = cli_main(["ingest", str(drop), "--column-map", str(mapping), "--time-origin",
                     "2020-01-01T00:00:00+01:00", "--workdir", str(other)])
    assert code == 0  # the flag wins over the file
    from pipelines.core.workspace import Workspace
    stamps = set(curated(Workspace.open(other)).column("timestamp").to_pylist())
    assert stamps == {datetime(2019, 12, 31, 23, tzinfo=UTC)}


def test_a_file_whose_every_timestamp_is_rejected_fails_the_ingest(workspace, tmp_path,
                                                                   capsys):
    drop = anonymous_csv(tmp_path / "creditcard.csv", [("0", "1.00", "0"), ("-3", "1.00", "0")])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(ANONYMOUS_MAP))

    code = cli_main(["ingest", str(drop), "--column-map", str(mapping),
                     "--workdir", str(workspace.root)])

    err = capsys.readouterr().err
    assert code == 2
    assert "creditcard.csv: none of its 2 rows has a usable timestamp" in err
    assert "--time-origin" in err
    assert not workspace.curated.exists() and not workspace.quarantine.exists()


def test_a_few_bad_timestamps_are_still_only_quarantined(workspace, tmp_path):
    report = ingest(workspace, [write_csv(tmp_path / "t.csv", [
        row("a"), row("b", timestamp="yesterday")])])
    assert (report.rows_curated, report.quarantine_reasons) == (1, {"bad_timestamp": 1})


def test_missing_customer_and_terminal_ids_are_stored_null_not_refused(workspace, tmp_path):
    no_entities = write_csv(tmp_path / "a.csv", [row("a"), row("b")],
                            columns=["transaction_id", "timestamp", "amount"])
    # "c" has no card either: with one, its customer id would be the card's (test_card_keys).
    blank_ones = write_csv(tmp_path / "b.csv", [row("c", customer_id="", card_number=""),
                                                row("d", terminal_id=" ")])

    report = ingest(workspace, [no_entities, blank_ones])

    records = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    assert report.rows_curated == 4 and report.rows_quarantined == 0
    assert [records[t]["customer_id"] for t in "abcd"] == [None, None, None, "C1"]
    assert [records[t]["terminal_id"] for t in "abcd"] == [None, None, "T1", None]


def test_a_blank_id_in_a_file_that_has_ids_is_still_quarantined(workspace, tmp_path):
    report = ingest(workspace, [write_csv(tmp_path / "a.csv", [row("a"), row("")])])
    assert report.quarantine_reasons == {"missing_transaction_id": 1}
    assert quarantined(workspace).column("source_line").to_pylist() == [3]


def test_zero_amounts_are_curated_and_negative_ones_quarantined(workspace, tmp_path):
    report = ingest(workspace, [write_csv(tmp_path / "a.csv", [
        row("zero", amount="0"), row("also-zero", amount="0.00"), row("neg", amount="-0.01")])])
    assert sorted(curated(workspace).column("transaction_id").to_pylist()) == [
        "also-zero", "zero"]
    assert report.quarantine_reasons == {"negative_amount": 1}


def test_fraudops_run_takes_a_time_origin_for_your_own_data(tmp_path, capsys):
    from pipelines.cli.commands.run import _options

    drop = anonymous_csv(tmp_path / "creditcard.csv", ROWS)
    args = build_parser().parse_args(["run", "--input", str(drop), "--time-origin",
                                      "2013-09-01T00:00:00Z"])
    assert _options(args).time_origin == ORIGIN
    with pytest.raises(SystemExit) as refused:  # a usage error, before anything runs
        build_parser().parse_args(["run", "--input", str(drop), "--time-origin", "soon"])
    assert refused.value.code == 2
    assert "'soon' is not an ISO-8601 time" in capsys.readouterr().err


def test_the_run_workflows_ingest_step_uses_the_time_origin(workspace, tmp_path):
    from rich.console import Console

    from pipelines.cli.commands.run import _options
    from pipelines.workflow.runner import RunContext
    from pipelines.workflow.steps import ingest as ingest_step

    drop = anonymous_csv(tmp_path / "creditcard.csv", ROWS)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(ANONYMOUS_MAP))
    args = build_parser().parse_args(["run", "--input", str(drop), "--column-map", str(mapping),
                                      "--time-origin", "2013-09-01T00:00:00Z"])
    context = RunContext(workspace=workspace, options=_options(args), console=Console())

    report = ingest_step(context)

    assert report.rows_curated == 5
    assert min(curated(workspace).column("timestamp").to_pylist()) == ORIGIN


def test_a_bad_time_origin_in_the_column_map_names_the_file(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"columns": ANONYMOUS_MAP, "time_origin": "last year"}))
    with pytest.raises(IngestError, match=r"map\.json: time_origin: 'last year' is not"):
        load_column_map(mapping)
    mapping.write_text(json.dumps({"columns": ANONYMOUS_MAP, "origin": "2013-09-01"}))
    with pytest.raises(IngestError, match="unknown setting"):
        load_column_map(mapping)
