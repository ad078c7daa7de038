"""The audit trail: hash chain, tamper detection, concurrent appends, card-data refusal."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pipelines.compliance.carddata import (
    CardDataError,
    assert_no_card_data,
    card_data_problems,
    luhn_valid,
)

from pipelines.cli.main import main as cli_main
from pipelines.compliance import audit
from pipelines.core.workspace import Workspace

VISA_TEST_PAN = "4111111111111111"


def _trail(ws: Workspace, n: int = 6) -> Path:
    for index in range(n):
        audit.record(ws, f"step.{index}", "alice", f"subject-{index}", {"index": index})
    return audit.audit_log_path(ws)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_entries_form_a_hash_chain(workspace: Workspace):
    _trail(workspace, 3)
    entries = audit.list_entries(workspace)
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev_hash"] == audit.GENESIS_HASH
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    for entry in entries:
        assert entry["hash"] == audit.entry_hash(entry)
        assert set(entry) == {
            "seq", "ts", "actor", "action", "subject", "details", "prev_hash", "hash",
        }  # fmt: skip
    report = audit.verify(workspace)
    assert report.ok and report.entries == 3


def test_an_edited_entry_is_named(workspace: Workspace):
    path = _trail(workspace)
    lines = _lines(path)
    entry = json.loads(lines[2])
    entry["details"]["index"] = 99  # quietly change what happened
    lines[2] = json.dumps(entry)
    _write(path, lines)

    report = audit.verify(workspace)

    assert not report.ok and report.first_bad_seq == 3 and "altered" in report.problem


def test_an_edit_with_a_recomputed_hash_still_breaks_the_chain(workspace: Workspace):
    path = _trail(workspace)
    lines = _lines(path)
    entry = json.loads(lines[2])
    entry["actor"] = "mallory"
    entry["hash"] = audit.entry_hash(entry)
    lines[2] = json.dumps(entry)
    _write(path, lines)

    report = audit.verify(workspace)

    assert report.first_bad_seq == 4 and "seq 3" in report.problem


def test_a_removed_entry_is_named(workspace: Workspace):
    path = _trail(workspace)
    lines = _lines(path)
    del lines[3]
    _write(path, lines)
    report = audit.verify(workspace)
    assert report.first_bad_seq == 4 and "seq 4 is missing" in report.problem


def test_a_reordered_entry_is_named(workspace: Workspace):
    path = _trail(workspace)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)
    report = audit.verify(workspace)
    assert report.first_bad_seq == 2 and "seq 3" in report.problem


def test_entries_cut_off_the_end_are_detected(workspace: Workspace):
    path = _trail(workspace)
    _write(path, _lines(path)[:-2])
    report = audit.verify(workspace)
    assert report.first_bad_seq == 5 and "removed" in report.problem


def test_cli_verify_exits_non_zero_and_names_the_seq(workspace: Workspace, capsys):
    path = _trail(workspace)
    assert cli_main(["audit", "verify", "--workdir", str(workspace.root)]) == 0
    assert "chain intact" in capsys.readouterr().out
    lines = _lines(path)
    lines[4] = lines[4].replace('"alice"', '"bob"')
    _write(path, lines)
    assert cli_main(["audit", "verify", "--workdir", str(workspace.root)]) == 1
    assert "BROKEN at seq 5" in capsys.readouterr().out


def test_a_torn_last_line_is_cut_and_the_chain_continues(workspace: Workspace):
    path = _trail(workspace, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 3, "ts": "20')  # a crash mid-write
    entry = audit.record(workspace, "after.crash", "alice")
    assert entry["seq"] == 3
    assert audit.verify(workspace).ok


def _append_many(root: str, worker: int, count: int) -> None:
    ws = Workspace.open(root)
    for index in range(count):
        audit.record(ws, "concurrent.append", f"worker-{worker}", str(index), {"i": index})


def test_concurrent_appends_from_several_processes_keep_one_chain(workspace: Workspace):
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_append_many, args=(str(workspace.root), worker, 25))
        for worker in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    entries = audit.list_entries(workspace)
    assert [e["seq"] for e in entries] == list(range(1, 101))
    assert audit.verify(workspace).ok


def test_list_filters_by_action_prefix_actor_and_since(workspace: Workspace, capsys):
    audit.record(workspace, "backup.create", "ops", "snap-1")
    audit.record(workspace, "backup.prune.refused", "ops", "snap-1")
    audit.record(workspace, "model.approve", "risk", "arn:pkg/1")
    assert [e["action"] for e in audit.list_entries(workspace, action="backup")] == [
        "backup.create",
        "backup.prune.refused",
    ]
    assert [e["action"] for e in audit.list_entries(workspace, actor="risk")] == ["model.approve"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert audit.list_entries(workspace, since=future) == []
    assert audit.parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    now = datetime(2026, 2, 1, tzinfo=UTC)
    assert audit.parse_since("7d", now) == now - timedelta(days=7)

    code = cli_main(
        ["audit", "list", "--action", "model", "--json", "--workdir", str(workspace.root)]
    )
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["subject"] for e in printed] == ["arn:pkg/1"]
    assert cli_main(["audit", "list", "--since", "soon", "--workdir", str(workspace.root)]) == 2


# --- card data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "details",
    [
        {"note": f"customer called about {VISA_TEST_PAN}"},
        {"nested": {"cards": ["4111 1111 1111 1111"]}},
        {"pan_with_dashes": "5555-5555-5555-4444"},
        {"amex": 378282246310005},
        {"cvv": "123"},
        {"card_number": "anything"},
    ],
)
def test_record_refuses_card_data_and_writes_nothing(workspace: Workspace, details):
    with pytest.raises(CardDataError) as refused:
        audit.record(workspace, "case.note", "analyst", "case-1", details)
    assert VISA_TEST_PAN not in str(refused.value)
    assert not audit.audit_log_path(workspace).exists()


def test_card_checks_let_masked_numbers_tokens_and_hashes_through():
    safe = {
        "card_masked": "411111******1111",
        "card_token": "tok_9f2c1e",
        "sha256": "1234567890123456789abcdef" + "0" * 39,
        "transaction_id": "tx-000000000042",
        "amount": 1234.5,
        "count": 4111111111111112,  # 16 digits, fails Luhn
    }
    assert card_data_problems(safe) == []
    assert_no_card_data(safe)
    assert luhn_valid(VISA_TEST_PAN) and not luhn_valid("4111111111111112")


def test_card_problem_messages_name_the_field_and_mask_the_number():
    problems = card_data_problems({"memo": f"pan {VISA_TEST_PAN}", "CVV2": None})
    assert any("'memo'" in p and "411111******1111" in p for p in problems)
    assert any("'CVV2'" in p and "sensitive authentication data" in p for p in problems)
