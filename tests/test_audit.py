"""The audit trail: authenticated chain, each forgery caught, legacy trails, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.cli.main import main as cli_main
from pipelines.compliance import audit
from pipelines.compliance.carddata import (
    CardDataError,
    assert_no_card_data,
    card_data_problems,
    luhn_valid,
)
from pipelines.compliance.signing import RecordsKey, key_path, records_key
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


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def _write_entries(path: Path, entries: list[dict]) -> None:
    _write(path, [audit.canonical_json(e).decode() for e in entries])


def _key(ws: Workspace) -> RecordsKey:
    key = records_key(ws, create=False)
    assert key is not None
    return key


def _verify_cli(ws: Workspace, capsys) -> tuple[int, str]:
    code = cli_main(["audit", "verify", "--workdir", str(ws.root)])
    return code, capsys.readouterr().out


def test_entries_form_an_authenticated_hash_chain(workspace: Workspace):
    _trail(workspace, 3)
    entries = audit.list_entries(workspace)
    key = _key(workspace)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["action"] == audit.OPEN_ACTION  # written as the records key is created
    assert entries[0]["prev_hash"] == audit.GENESIS_HASH
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    for entry in entries:
        assert entry["hash"] == audit.entry_mac(entry, key) != audit.entry_hash(entry)
        assert entry["key_id"] == key.key_id
        assert set(entry) == {
            "seq", "ts", "actor", "action", "subject", "details", "prev_hash", "key_id", "hash",
        }  # fmt: skip
    report = audit.verify(workspace)
    assert report.ok and report.entries == 4 and report.legacy_entries == 0


def test_the_records_key_lives_apart_from_the_records_with_mode_0600(workspace: Workspace):
    _trail(workspace, 1)
    key_file = key_path(workspace)
    assert workspace.records not in key_file.parents and workspace.vault not in key_file.parents
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    secret = key_file.read_text().strip()
    for path in workspace.records.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes()
    key_file.chmod(0o644)
    with pytest.raises(audit.AuditError, match="chmod 600"):
        audit.record(workspace, "after.chmod", "alice")


# --- one test per forgery: none of them passes verify -----------------------------------------


def test_an_edited_entry_is_named(workspace: Workspace):
    path = _trail(workspace)
    entries = _entries(path)
    entries[2]["details"]["index"] = 99  # quietly change what happened
    _write_entries(path, entries)

    report = audit.verify(workspace)

    assert not report.ok and report.first_bad_seq == 3 and "altered or forged" in report.problem


def test_an_edit_with_a_recomputed_hash_is_named(workspace: Workspace):
    path = _trail(workspace)
    entries = _entries(path)
    entries[2]["actor"] = "mallory"
    entries[2]["hash"] = audit.entry_hash(entries[2])  # the forger has no key: plain SHA-256
    _write_entries(path, entries)

    report = audit.verify(workspace)

    assert report.first_bad_seq == 3 and "MAC does not match" in report.problem


def test_a_chain_fully_rehashed_with_another_key_is_caught(workspace: Workspace):
    path = _trail(workspace)
    forger = RecordsKey(b"the forger's own key, 32 bytes!!")
    entries, prev = _entries(path), audit.GENESIS_HASH
    entries[2]["actor"] = "mallory"
    for entry in entries:  # same key_id claimed, every MAC and link recomputed
        entry["prev_hash"] = prev
        entry["hash"] = prev = audit.entry_mac(entry, forger)
    _write_entries(path, entries)
    head = {"seq": 7, "hash": prev, "key_id": _key(workspace).key_id}
    head["mac"] = forger.mac(audit.HEAD_PURPOSE, audit.canonical_json(head))
    audit.head_path(workspace).write_bytes(audit.canonical_json(head))

    report = audit.verify(workspace)

    assert report.first_bad_seq == 1 and "altered or forged" in report.problem


def test_a_chain_rehashed_without_authentication_is_not_ok_and_not_extended(
    workspace: Workspace, capsys
):
    path = _trail(workspace)
    entries, prev = _entries(path), audit.GENESIS_HASH
    entries[2]["actor"] = "mallory"
    for entry in entries:  # downgraded to the legacy format, head included
        del entry["key_id"]
        entry["prev_hash"] = prev
        entry["hash"] = prev = audit.entry_hash(entry)
    _write_entries(path, entries)
    audit.head_path(workspace).write_bytes(audit.canonical_json({"seq": 7, "hash": prev}))

    report = audit.verify(workspace)

    assert not report.ok and report.unauthenticated and report.legacy_entries == 7
    code, out = _verify_cli(workspace, capsys)
    assert code == 1 and "UNAUTHENTICATED" in out
    with pytest.raises(audit.AuditError, match="records key already exists"):
        audit.record(workspace, "launder", "mallory")  # the next action does not bless it


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


@pytest.mark.parametrize("form", ["authenticated", "legacy"])
def test_an_appended_forged_entry_is_named(workspace: Workspace, form):
    path = _trail(workspace)
    entries = _entries(path)
    forged = {**entries[-1], "seq": 8, "action": "model.approve", "actor": "mallory",
              "prev_hash": entries[-1]["hash"]}  # fmt: skip
    if form == "legacy":
        del forged["key_id"]
    forged["hash"] = audit.entry_hash(forged)  # correctly chained, as well as a forger can
    _write_entries(path, [*entries, forged])
    audit.head_path(workspace).write_bytes(audit.canonical_json({"seq": 8, "hash": forged["hash"]}))

    report = audit.verify(workspace)

    assert report.first_bad_seq == 8
    assert ("MAC does not match" if form == "authenticated" else "follows authenticated") in (
        report.problem
    )
    with pytest.raises(audit.AuditError, match="Nothing is appended|re-written"):
        audit.record(workspace, "after.forgery", "alice")  # fail closed: no chaining onto it


def test_entries_cut_off_the_end_are_detected(workspace: Workspace):
    path = _trail(workspace)
    _write(path, _lines(path)[:-2])
    report = audit.verify(workspace)
    assert report.first_bad_seq == 6 and "removed" in report.problem


@pytest.mark.parametrize("head", ["plain", "other-key"])
def test_truncation_with_the_head_file_rewritten_is_detected(workspace: Workspace, head):
    path = _trail(workspace)
    entries = _entries(path)[:-1]  # the last entry deleted ...
    _write_entries(path, entries)
    new_head = {"seq": 6, "hash": entries[-1]["hash"]}  # ... and the head made to agree
    if head == "other-key":
        new_head["key_id"] = entries[-1]["key_id"]
        new_head["mac"] = RecordsKey(b"x" * 32).mac(audit.HEAD_PURPOSE,
                                                    audit.canonical_json(new_head))
    audit.head_path(workspace).write_bytes(audit.canonical_json(new_head))

    report = audit.verify(workspace)

    assert not report.ok and "audit.head.json" in report.problem


def test_truncation_behind_a_replayed_head_is_caught_by_an_anchor(workspace: Workspace):
    path = _trail(workspace, 5)
    old_head = audit.head_path(workspace).read_bytes()  # saved by the forger at seq 6
    anchored = audit.record(workspace, "backup.create", "ops", "snap")  # seq 7, anchored
    _trail(workspace, 1)
    _write(path, _lines(path)[:6])
    audit.head_path(workspace).write_bytes(old_head)
    assert audit.verify(workspace).ok  # the head file alone cannot tell ...

    report = audit.verify(
        workspace, [audit.Anchor(7, anchored["hash"], "snapshot 20260101T000000Z-abcdef")]
    )

    assert not report.ok and report.first_bad_seq == 7  # ... the anchor can
    assert "snapshot 20260101T000000Z-abcdef recorded the trail at seq 7" in report.problem


@pytest.mark.parametrize("wiped", ["entries", "trail and head"])
def test_a_wiped_trail_is_detected_and_not_restarted(workspace: Workspace, wiped):
    path = _trail(workspace)
    path.write_bytes(b"")
    if wiped == "trail and head":
        path.unlink()
        audit.head_path(workspace).unlink()
    report = audit.verify(workspace)
    assert not report.ok and report.first_bad_seq == 1 and "removed" in report.problem
    with pytest.raises(audit.AuditError, match="removed"):
        audit.record(workspace, "after.wipe", "alice")


def test_without_the_records_key_the_trail_cannot_be_verified_or_extended(workspace: Workspace):
    _trail(workspace, 2)
    key_path(workspace).rename(workspace.root / "elsewhere.key")
    report = audit.verify(workspace)
    assert not report.ok and "no records key" in report.problem
    with pytest.raises(audit.AuditError, match="no records key"):
        audit.record(workspace, "after.key.loss", "alice")
    assert not key_path(workspace).exists()  # no new key was minted behind the trail's back


def test_cli_verify_exits_non_zero_and_names_the_seq(workspace: Workspace, capsys):
    path = _trail(workspace)
    code, out = _verify_cli(workspace, capsys)
    assert code == 0 and "chain intact" in out and "authenticated" in out
    lines = _lines(path)
    lines[4] = lines[4].replace('"alice"', '"bob"')
    _write(path, lines)
    code, out = _verify_cli(workspace, capsys)
    assert code == 1 and "BROKEN at seq 5" in out


# --- legacy (unauthenticated) trails from older versions -------------------------------------


def _legacy_trail(ws: Workspace, n: int) -> Path:
    """A trail as the previous version wrote it: plain SHA-256 chain, unsigned head."""
    path, prev, entries = audit.audit_log_path(ws), audit.GENESIS_HASH, []
    for seq in range(1, n + 1):
        entry = {"seq": seq, "ts": f"2025-01-0{seq}T00:00:00+00:00", "actor": "old",
                 "action": "ingest.run", "subject": f"run-{seq}", "details": {},
                 "prev_hash": prev}  # fmt: skip
        entry["hash"] = prev = audit.entry_hash(entry)
        entries.append(entry)
    path.parent.mkdir(parents=True)
    _write_entries(path, entries)
    audit.head_path(ws).write_bytes(audit.canonical_json({"seq": n, "hash": prev}))
    return path


def test_a_legacy_trail_verifies_as_unauthenticated_until_it_is_sealed(
    workspace: Workspace, capsys
):
    _legacy_trail(workspace, 3)
    report = audit.verify(workspace)
    assert report.first_bad_seq is None and report.unauthenticated and not report.ok
    code, out = _verify_cli(workspace, capsys)
    assert code == 1 and "UNAUTHENTICATED" in out and "3 legacy" in out

    entry = audit.record(workspace, "ingest.run", "alice", "run-4")  # the first key is minted

    seal = audit.list_entries(workspace)[3]
    assert seal["action"] == audit.SEAL_ACTION and seal["details"]["legacy_entries"] == 3
    assert entry["seq"] == 5 and seal["key_id"] == entry["key_id"]
    report = audit.verify(workspace)
    assert report.ok and report.legacy_entries == 3
    code, out = _verify_cli(workspace, capsys)
    assert code == 0 and "3 legacy entries" in out


def test_a_legacy_trail_behind_an_existing_key_needs_an_operator_seal(
    workspace: Workspace, capsys
):
    _legacy_trail(workspace, 2)
    records_key(workspace, create=True)  # e.g. restored from another workspace
    with pytest.raises(audit.AuditError, match="fraudops audit seal"):
        audit.record(workspace, "ingest.run", "alice")
    assert cli_main(["audit", "seal", "--workdir", str(workspace.root)]) == 0
    assert "sealed 2 legacy" in capsys.readouterr().out
    audit.record(workspace, "ingest.run", "alice")
    assert audit.verify(workspace).ok
    assert cli_main(["audit", "seal", "--workdir", str(workspace.root)]) == 0
    assert "nothing to seal" in capsys.readouterr().out


def test_a_legacy_entry_inserted_before_the_seal_breaks_the_chain(workspace: Workspace):
    path = _legacy_trail(workspace, 2)
    audit.record(workspace, "ingest.run", "alice")
    entries = _entries(path)
    entries[1]["subject"] = "run-forged"
    entries[1]["hash"] = audit.entry_hash(entries[1])
    _write_entries(path, entries)
    report = audit.verify(workspace)
    assert report.first_bad_seq == 3 and "prev_hash differs" in report.problem


def test_a_torn_last_line_is_cut_and_the_chain_continues(workspace: Workspace):
    path = _trail(workspace, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 4, "ts": "20')  # a crash mid-write
    entry = audit.record(workspace, "after.crash", "alice")
    assert entry["seq"] == 4
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
    assert [e["seq"] for e in entries] == list(range(1, 102))  # audit.open + 100
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


def test_commands_refuse_to_act_on_a_forged_trail_with_a_one_line_error(
    workspace: Workspace, tmp_path: Path, capsys
):
    from fixtures.landing import row, write_csv

    path = _trail(workspace, 2)
    entries = _entries(path)
    entries[-1]["actor"] = "mallory"
    _write_entries(path, entries)
    root = ["--workdir", str(workspace.root)]

    hold = ["backup", "hold", "add", "--zone", "records", "--reason", "case 9"]
    assert cli_main([*hold, *root]) == 2
    assert "seq 3" in capsys.readouterr().err
    assert not (workspace.records / "legal_holds").exists()  # not placed unaudited

    drop = write_csv(tmp_path / "drop.csv", [row("t1")])
    assert cli_main(["ingest", str(drop), *root]) == 3
    err = capsys.readouterr().err
    assert "audit trail:" in err and "seq 3" in err and "Traceback" not in err
    assert not workspace.curated.exists()  # nothing committed on top of it
