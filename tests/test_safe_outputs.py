"""Safe outputs: spreadsheet-safe CSVs, owner-only workspace files (issue 11, item 5).

Every CSV the product writes for people (report tables, ``fraudops query --format
csv``, ``fraudops athena query --format csv``) goes through ``pipelines.core.csvsafe``:
a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading single
quote (OWASP), numbers stay numbers, and nested values become JSON text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from test_lineage import curated_row, write_curated

from pipelines.analytics.reports import generate
from pipelines.cli.main import main as cli_main
from pipelines.core import csvsafe
from pipelines.core.workspace import Workspace
from pipelines.serving.alerts import CaseQueue

PAYLOADS = ["=HYPERLINK(\"http://x.test\",\"click\")", "+1+1", "-2+3+cmd|' /C calc'!A0",
            "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]


def read_csv_text(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_no_formula_cells(rows: list[list[str]]) -> None:
    """A cell may start with a formula character only if it is a plain number (-12.5)."""
    for row in rows:
        for cell in row:
            if cell.startswith(csvsafe.FORMULA_PREFIXES):
                float(cell)


# --- the helper ------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_formula_prefix_is_neutralised_in_rows(payload):
    out = io.StringIO(newline="")
    csvsafe.write_rows(out, ["text", payload], [[payload, -12.5], ["plain", 3]])
    rows = read_csv_text(out.getvalue())
    assert rows == [["text", "'" + payload], ["'" + payload, "-12.5"], ["plain", "3"]]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_formula_prefix_is_neutralised_in_arrow_tables(payload):
    table = pa.table({
        "text": [payload, "ok", None],
        "coded": pa.array([payload, "ok", "ok"]).dictionary_encode(),
        "blob": [payload.encode(), b"ok", None],
        "amount": [-12.5, 0.0, None],
        "count": pa.array([-3, 1, 2], pa.int64()),
    })
    out = io.BytesIO()
    csvsafe.write_table(table, out)
    rows = read_csv_text(out.getvalue().decode())
    assert rows[1][:3] == ["'" + payload] * 3
    assert rows[1][3:] == ["-12.5", "-3"]  # typed numbers stay numbers
    assert rows[3][0] == ""  # null stays empty


def test_text_that_looks_like_a_negative_number_is_quoted_numbers_are_not():
    out = io.BytesIO()
    csvsafe.write_table(pa.table({"as_text": ["-12.5"], "as_number": [-12.5]}), out)
    assert read_csv_text(out.getvalue().decode())[1] == ["'-12.5", "-12.5"]


def test_nested_values_become_json_text_then_neutralised():
    table = pa.table({
        "tags": [["a", "b"], [], None],
        "point": [{"x": 1, "label": "=1"}, None, {"x": 2, "label": "b"}],
        "formula_list": pa.array([["=1"], ["x"], ["y"]]),
    })
    out = io.BytesIO()
    csvsafe.write_table(table, out)
    rows = read_csv_text(out.getvalue().decode())
    assert json.loads(rows[1][0]) == ["a", "b"] and rows[2][0] == "[]" and rows[3][0] == ""
    assert json.loads(rows[1][1]) == {"x": 1, "label": "=1"}  # JSON text starts with {
    assert_no_formula_cells(rows)


# --- fraudops query / athena query ------------------------------------------------------------
@pytest.fixture
def lake(workspace: Workspace) -> Workspace:
    write_curated(workspace, [
        curated_row("t1", "2026-03-03T09:00:00Z", PAYLOADS[0], -12.5, terminal_id="@T1"),
        curated_row("t2", "2026-03-03T10:00:00Z", "C2", 20.0, merchant_category="+5411"),
    ])
    return workspace


def test_query_csv_is_spreadsheet_safe_and_keeps_numbers(lake, capsys):
    sql = ("SELECT customer_id, terminal_id, merchant_category, amount FROM transactions "
           "ORDER BY transaction_id")
    assert cli_main(["query", sql, "--format", "csv", "--workdir", str(lake.root)]) == 0
    rows = read_csv_text(capsys.readouterr().out)
    assert rows[1] == ["'" + PAYLOADS[0], "'@T1", "", "-12.5"]
    assert rows[2] == ["C2", "T1", "'+5411", "20"]
    assert_no_formula_cells(rows)


def test_query_csv_of_list_and_struct_columns_does_not_crash(lake, capsys):
    sql = ("SELECT list(customer_id ORDER BY transaction_id) AS customers, "
           "{'first': min(amount), 'who': min(terminal_id)} AS summary, "
           "histogram(channel) AS channels FROM transactions")
    assert cli_main(["query", sql, "--format", "csv", "--workdir", str(lake.root)]) == 0
    header, row = read_csv_text(capsys.readouterr().out)
    assert header == ["customers", "summary", "channels"]
    assert json.loads(row[0]) == [PAYLOADS[0], "C2"]
    assert json.loads(row[1]) == {"first": -12.5, "who": "@T1"}
    assert json.loads(row[2]) == [["card_present", 2]] or json.loads(row[2]) == {
        "card_present": 2}


def test_athena_named_query_csv_goes_through_the_same_helper(lake, capsys):
    code = cli_main(["athena", "query", "--named", "fraud_rate_by_merchant_category",
                     "--format", "csv", "--no-export", "--workdir", str(lake.root)])
    assert code == 0
    rows = read_csv_text(capsys.readouterr().out)
    assert "'+5411" in [row[0] for row in rows]
    assert_no_formula_cells(rows)


# --- report CSVs -------------------------------------------------------------------------------
def _cash(tid: str, ts: str, customer: str, amount: float, **extra) -> dict:
    return curated_row(tid, ts, customer, amount, is_cash=True, **extra)


def test_report_csvs_neutralise_attacker_controlled_text(workspace: Workspace):
    ctr_customer, structurer, sar_customer = PAYLOADS[0], PAYLOADS[3], PAYLOADS[1]
    write_curated(workspace, [
        _cash("A1", "2026-03-03T09:00:00Z", ctr_customer, 6_000.0, terminal_id="=T1"),
        _cash("A2", "2026-03-03T15:00:00Z", ctr_customer, 4_500.0, terminal_id="-T2"),
        _cash("S1", "2026-03-04T11:00:00Z", structurer, 9_400.0),
        _cash("S2", "2026-03-05T11:00:00Z", structurer, 9_300.0),
        curated_row("H1", "2026-03-04T08:00:00Z", sar_customer, 3_000.0),
    ])
    queue = CaseQueue(workspace.cases_db)
    queue.add_alert({"transaction_id": "H1", "card_id": sar_customer, "terminal_id": "@T9",
                     "amount": 3_000.0, "tx_timestamp": "2026-03-04T08:00:00+00:00",
                     "score": 0.97, "severity": "high", "model_version": "1",
                     "reasons": ["=cmd|' /C calc'!A0"]})

    written = [generate(workspace, name, date(2026, 3, 1), date(2026, 3, 6))
               for name in ("ctr", "sar-candidates")]
    csvs = {p.name: p for w in written for p in w.directory.glob("*.csv")}
    assert {"ctr.csv", "structuring_flags.csv", "sar_candidates.csv"} <= set(csvs)
    cells: set[str] = set()
    for path in csvs.values():
        rows = read_csv_text(path.read_text(encoding="utf-8"))
        assert_no_formula_cells(rows)
        cells.update(cell for row in rows for cell in row)
    for payload in (ctr_customer, structurer, sar_customer):
        assert "'" + payload in cells  # the value is kept, shown as text


# --- owner-only workspace -----------------------------------------------------------------------
def loose_modes(root: Path) -> list[str]:
    """Every path under ``root`` that anyone but its owner can read, write or enter."""
    loose = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(root)} {mode:o}")
        elif path.is_dir() and mode != 0o700:
            loose.append(f"{path.relative_to(root)} {mode:o} (directory, want 700)")
    return loose


def test_a_small_run_leaves_only_owner_only_files(tmp_path: Path):
    # A permissive umask, as on many desktops: the workspace must not depend on it.
    previous = os.umask(0o022)
    try:
        root = tmp_path / "ws"
        drop = tmp_path / "drop.csv"
        drop.write_text("transaction_id,timestamp,customer_id,terminal_id,amount,card_number,"
                        "is_fraud,is_cash\n"
                        "t1,2026-03-03T09:00:00Z,C1,T1,11000.00,4111111111111111,0,true\n"
                        "t2,2026-03-03T10:00:00Z,C2,T2,-5.00,,0,false\n")
        for argv in (["ingest", str(drop)],
                     ["query", "SELECT count(*) FROM transactions"],
                     ["report", "ctr", "--from", "2026-03-01", "--to", "2026-03-06"],
                     ["backup", "create"]):
            assert cli_main([*argv, "--workdir", str(root)]) == 0, argv
        ws = Workspace(root)
        for area in (ws.lake, ws.catalog_db, ws.vault, ws.records, ws.secrets):
            assert area.exists(), area
        assert loose_modes(root) == []
    finally:
        os.umask(previous)


def test_opening_an_old_workspace_closes_its_root(tmp_path: Path):
    root = tmp_path / "old"
    (root / "s3").mkdir(parents=True)
    root.chmod(0o755)
    Workspace.open(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
