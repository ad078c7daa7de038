"""The local vault: round trip, damage detection, increments, locks, crashes, minimisation."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main as cli_main
from pipelines.compliance import audit, vault
from pipelines.compliance.locks import LockTimeout, workspace_lock
from pipelines.compliance.policy import BSA_RETENTION_DAYS, FILE_ZONES, place_legal_hold, zone_root
from pipelines.compliance.retention import minimise
from pipelines.core.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent


def _write_partition(root: Path, day: str, rows: int = 50, seed: int = 0) -> Path:
    """One day partition written the way writers do: staging dir, then os.replace."""
    table = pa.table(
        {
            "transaction_id": [f"tx-{day}-{seed}-{i}" for i in range(rows)],
            "amount": [float(i + seed) for i in range(rows)],
            "dt": [day] * rows,
        }
    )
    staging = root / f".dt={day}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, staging / "part-0.parquet")
    final = root / f"dt={day}"
    os.replace(staging, final)
    return final / "part-0.parquet"


def _populate(ws: Workspace) -> None:
    for index in range(3):
        _write_partition(ws.curated, f"2026-01-0{index + 1}", seed=index)
        _write_partition(ws.features, f"2026-01-0{index + 1}", seed=10 + index)
    _write_partition(ws.scored, "2026-01-03")
    (ws.features / "_feature_set.json").write_text('{"version": "1"}')
    (ws.records / "reports").mkdir(parents=True)
    (ws.records / "reports" / "sar.html").write_text("<html>SAR candidates</html>")
    (ws.artifacts / "models").mkdir(parents=True)
    (ws.artifacts / "models" / "model.tar.gz").write_bytes(os.urandom(4096))
    audit.record(ws, "ingest.run", "tester", "transactions.csv", {"rows": 150})
    with sqlite3.connect(ws.registry_db) as db:
        db.execute("CREATE TABLE packages (arn TEXT, status TEXT)")
        db.execute("INSERT INTO packages VALUES ('arn:1', 'Approved')")
    with sqlite3.connect(ws.cases_db) as db:
        db.execute("CREATE TABLE cases (id INTEGER, disposition TEXT)")
        db.execute("INSERT INTO cases VALUES (1, 'fraud')")
    catalog = duckdb.connect(str(ws.catalog_db))
    catalog.execute("CREATE TABLE tables AS SELECT 'transactions' AS name, 3 AS partitions")
    catalog.close()


def _zone_files(ws_root: Path, zone_path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(ws_root).as_posix(): p.read_bytes()
        for p in zone_path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(zone_path).parts)
    }


@pytest.fixture
def populated(workspace: Workspace) -> Workspace:
    _populate(workspace)
    return workspace


# --- round trip ----------------------------------------------------------------------


def test_backup_then_restore_gives_a_byte_identical_tree(populated: Workspace, tmp_path: Path):
    ws = populated
    (ws.curated / ".dt=2026-01-09.staging").mkdir()  # a writer mid-way: never captured
    (ws.curated / ".dt=2026-01-09.staging" / "part-0.parquet").write_bytes(b"half")
    result = vault.create_snapshot(ws)
    target = tmp_path / "restored"

    vault.restore_snapshot(ws, result.snapshot.snapshot_id, target)

    for zone in FILE_ZONES:
        original = _zone_files(ws.root, zone_root(ws, zone))
        restored = _zone_files(target, target / zone_root(ws, zone).relative_to(ws.root))
        assert restored.keys() == original.keys(), zone
        for name, data in restored.items():
            if name.endswith("audit.jsonl"):
                # The source trail grew after the snapshot (backup.create, backup.restore);
                # the restored one ends with where it came from (backup.restored).
                *captured, restored_from = data.splitlines(keepends=True)
                assert original[name].startswith(b"".join(captured))
                assert json.loads(restored_from)["action"] == "backup.restored"
            elif not name.endswith("audit.head.json"):
                assert data == original[name], name
    assert not list(target.rglob("*.staging"))
    with sqlite3.connect(target / "registry.sqlite") as db:
        assert db.execute("SELECT * FROM packages").fetchall() == [("arn:1", "Approved")]
    with sqlite3.connect(target / "cases.sqlite") as db:
        assert db.execute("SELECT * FROM cases").fetchall() == [(1, "fraud")]
    catalog = duckdb.connect(str(target / "catalog.duckdb"), read_only=True)
    assert catalog.execute("SELECT * FROM tables").fetchall() == [("transactions", 3)]
    catalog.close()
    restored_trail = Workspace(target)
    assert audit.verify(restored_trail).ok
    assert [e["action"] for e in audit.list_entries(restored_trail)] == [
        "audit.open",
        "ingest.run",
        "backup.restored",
    ]
    assert vault.verify_snapshots(restored_trail).ok  # its vault starts empty, and says why


def test_sqlite_is_copied_consistently_while_a_writer_holds_uncheckpointed_wal(
    workspace: Workspace, tmp_path: Path
):
    writer = sqlite3.connect(workspace.cases_db)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # committed rows stay in the -wal file
    writer.execute("CREATE TABLE cases (id INTEGER, disposition TEXT)")
    writer.executemany("INSERT INTO cases VALUES (?, ?)", [(i, "fraud") for i in range(500)])
    writer.commit()
    assert Path(f"{workspace.cases_db}-wal").stat().st_size > 0
    try:
        snapshot = vault.create_snapshot(workspace, zones=("cases_db",)).snapshot
    finally:
        writer.close()
    vault.restore_snapshot(workspace, snapshot.snapshot_id, tmp_path / "r")
    with sqlite3.connect(tmp_path / "r" / "cases.sqlite") as restored:
        assert restored.execute("SELECT count(*) FROM cases").fetchall() == [(500,)]


def test_restore_refuses_a_non_empty_target_and_leaves_it_alone(populated, tmp_path):
    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(vault.VaultError, match="not empty"):
        vault.restore_snapshot(populated, snapshot.snapshot_id, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_restore_of_a_damaged_object_stops_and_writes_nothing(populated, tmp_path):
    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    victim = vault.object_path(populated, snapshot.entries[-1].sha256)
    victim.chmod(0o644)
    victim.write_bytes(b"tampered")
    target = tmp_path / "restored"
    with pytest.raises(vault.VaultError, match=snapshot.entries[-1].path):
        vault.restore_snapshot(populated, snapshot.snapshot_id, target)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored")]


# --- verify ----------------------------------------------------------------------------


def test_verify_names_an_altered_and_a_deleted_object(populated, capsys):
    ws = populated
    snapshot = vault.create_snapshot(ws).snapshot
    assert vault.verify_snapshots(ws).ok
    curated = [e for e in snapshot.entries if e.zone == "curated"]
    altered, deleted = curated[0], curated[1]
    path = vault.object_path(ws, altered.sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"X")  # same size, one byte flipped
    vault.object_path(ws, deleted.sha256).unlink()

    report = vault.verify_snapshots(ws)

    assert not report.ok
    text = "\n".join(report.problems)
    assert f"curated/{altered.path}" in text and f"{altered.sha256[2:]} is altered" in text
    assert f"curated/{deleted.path}" in text and f"{deleted.sha256[2:]} is missing" in text
    assert len(report.problems) == 2
    assert cli_main(["backup", "verify", "--workdir", str(ws.root)]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_verify_detects_an_edited_manifest(populated):
    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    manifest = populated.vault / "snapshots" / f"{snapshot.snapshot_id}.json"
    body = json.loads(manifest.read_text())
    body["entries"][0]["retain_until"] = "2020-01-01T00:00:00+00:00"  # an early unlock
    manifest.write_text(json.dumps(body))
    report = vault.verify_snapshots(populated)
    assert not report.ok and f"{snapshot.snapshot_id}.json was altered" in report.problems[0]


# --- incremental -----------------------------------------------------------------------


def test_incremental_backup_stores_only_the_change(populated: Workspace):
    ws = populated
    first = vault.create_snapshot(ws, zones=("curated", "features"))
    assert first.bytes_written == first.bytes_total > 0
    new_file = _write_partition(ws.curated, "2026-01-04", seed=99)

    second = vault.create_snapshot(ws, zones=("curated", "features"))

    assert second.bytes_written == new_file.stat().st_size
    assert second.objects_written == 1
    assert second.files == first.files + 1


def test_every_zone_increment_counts_exactly_the_new_contents(populated: Workspace):
    ws = populated
    first = vault.create_snapshot(ws).snapshot
    (ws.records / "reports" / "ctr.html").write_text("<html>CTR</html>")
    second = vault.create_snapshot(ws)
    before = {e.sha256 for e in first.entries}
    new = {e.sha256: e.size for e in second.snapshot.entries if e.sha256 not in before}
    assert second.bytes_written == sum(new.values())
    # the new report, the grown audit trail and its head; the databases are unchanged
    changed = {e.path for e in second.snapshot.entries if e.sha256 in new}
    assert changed == {"reports/ctr.html", "audit/audit.jsonl", "audit/audit.head.json"}


def test_identical_files_are_stored_once(workspace: Workspace):
    for day in ("2026-02-01", "2026-02-02"):
        (workspace.labels / f"dt={day}").mkdir(parents=True)
        (workspace.labels / f"dt={day}" / "labels.csv").write_text("transaction_id,is_fraud\n")
    result = vault.create_snapshot(workspace, zones=("labels",))
    assert result.files == 2 and result.objects_written == 1


# --- retain-until locks, prune, legal holds -------------------------------------------


def test_deleting_before_retain_until_is_refused_named_and_audited(populated, capsys):
    ws = populated
    snapshot = vault.create_snapshot(ws, zones=("curated",)).snapshot
    retain_until = snapshot.retain_until
    assert retain_until.startswith(
        (datetime.fromisoformat(snapshot.created_at) + timedelta(days=35)).date().isoformat()
    )

    with pytest.raises(vault.SnapshotLocked) as refused:
        vault.delete_snapshots(ws, [snapshot.snapshot_id])

    assert snapshot.snapshot_id in str(refused.value) and retain_until in str(refused.value)
    assert vault.snapshot_ids(ws) == [snapshot.snapshot_id]
    assert vault.verify_snapshots(ws).ok
    refusals = audit.list_entries(ws, action="backup.delete.refused")
    assert [e["subject"] for e in refusals] == [snapshot.snapshot_id]
    assert refusals[0]["details"]["retain_until"] == retain_until
    assert cli_main(["backup", "prune", snapshot.snapshot_id, "--workdir", str(ws.root)]) == 1
    assert f"locked until {retain_until}" in capsys.readouterr().out
    assert len(audit.list_entries(ws, action="backup.delete.refused")) == 2


def test_prune_expires_working_data_keeps_records_and_collects_garbage(populated):
    ws = populated
    snapshot = vault.create_snapshot(ws).snapshot
    curated_objects = {e.sha256 for e in snapshot.entries if e.zone == "curated"}
    later = datetime.fromisoformat(snapshot.created_at) + timedelta(days=36)

    result = vault.prune(ws, now=later)

    kept = vault.load_snapshot(ws, snapshot.snapshot_id)
    assert {e.zone for e in kept.entries} == {"records", "artifacts", "registry_db", "cases_db"}
    assert result.entries_expired == len(snapshot.entries) - len(kept.entries)
    assert all(not vault.object_path(ws, sha).exists() for sha in curated_objects)
    assert result.objects_removed >= len(curated_objects)
    assert vault.verify_snapshots(ws).ok
    assert kept.pruned and "curated" in kept.pruned[0]["zones"]


def test_prune_keeps_expired_data_under_legal_hold(populated):
    ws = populated
    snapshot = vault.create_snapshot(ws, zones=("curated", "scored")).snapshot
    hold = place_legal_hold(ws, "scored", "dt=2026-01-03", "subpoena 17", "counsel")
    later = datetime.fromisoformat(snapshot.created_at) + timedelta(days=40)

    result = vault.prune(ws, now=later)

    kept = vault.load_snapshot(ws, snapshot.snapshot_id)
    assert [e.zone for e in kept.entries] == ["scored"]
    assert (snapshot.snapshot_id, hold.hold_id) in result.kept_held
    with pytest.raises(vault.SnapshotLocked, match=hold.hold_id):
        vault.delete_snapshots(ws, [snapshot.snapshot_id], now=later)


def test_delete_after_retain_until_removes_snapshot_and_its_objects(populated):
    ws = populated
    snapshot = vault.create_snapshot(ws, zones=("curated",)).snapshot
    later = datetime.fromisoformat(snapshot.retain_until) + timedelta(seconds=1)
    result = vault.delete_snapshots(ws, [snapshot.snapshot_id], now=later)
    assert result.snapshots_removed == [snapshot.snapshot_id]
    assert vault.snapshot_ids(ws) == []
    assert not any(p.is_file() for p in (ws.vault / "objects").rglob("*"))


# --- consistency: locks and a real crash -------------------------------------------------


def test_backup_waits_for_writers_holding_the_workspace_lock(populated):
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with workspace_lock(populated, exclusive=False):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    holding.wait(5)
    try:
        with pytest.raises(LockTimeout, match="another fraudops process"):
            vault.create_snapshot(populated, lock_timeout=0.2)
    finally:
        release.set()
        thread.join()
    assert vault.snapshot_ids(populated) == []
    assert vault.create_snapshot(populated, lock_timeout=5).files > 0


_SLOW_BACKUP = textwrap.dedent(
    """
    import sys, time
    from pipelines.compliance import vault
    from pipelines.compliance.vault import snapshot
    from pipelines.core.workspace import Workspace

    real_store = snapshot._store_object

    def slow_store(*args, **kwargs):
        outcome = real_store(*args, **kwargs)
        time.sleep(0.05)  # widen the window so the kill lands mid-backup
        return outcome

    snapshot._store_object = slow_store
    vault.create_snapshot(Workspace.open(sys.argv[1]))
    """
)


def test_a_backup_killed_mid_way_loses_nothing(populated: Workspace, tmp_path: Path):
    ws = populated
    first = vault.create_snapshot(ws).snapshot
    for day in range(10, 30):
        _write_partition(ws.curated, f"2026-01-{day}", rows=200, seed=day)
    objects_before = sum(1 for p in (ws.vault / "objects").rglob("*") if p.is_file())

    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BACKUP, str(ws.root)],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while sum(1 for p in (ws.vault / "objects").rglob("*") if p.is_file()) < objects_before + 5:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the backup never started writing objects"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (ws.vault / "tmp").mkdir(exist_ok=True)
    (ws.vault / "tmp" / "leftover.part").write_bytes(b"a torn object")  # as if killed mid-copy

    assert vault.snapshot_ids(ws) == [first.snapshot_id]  # no manifest: no snapshot
    assert vault.verify_snapshots(ws).ok
    second = vault.create_snapshot(ws, lock_timeout=5)
    assert not any((ws.vault / "tmp").iterdir())
    assert vault.verify_snapshots(ws).ok
    target = tmp_path / "after-crash"
    vault.restore_snapshot(ws, second.snapshot.snapshot_id, target)
    assert _zone_files(target, target / "s3/lake/curated/transactions") == _zone_files(
        ws.root, ws.curated
    )
    # objects written before the kill were reused, not written twice
    new_days = [
        e for e in second.snapshot.entries if e.zone == "curated" and e.path >= "dt=2026-01-10"
    ]
    assert len(new_days) == 20
    assert second.bytes_written < sum(e.size for e in new_days)


# --- schedule ------------------------------------------------------------------------------


def test_schedule_is_daily_by_default_and_run_if_due_follows_it(workspace: Workspace):
    _write_partition(workspace.curated, "2026-03-01")
    start = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    assert vault.get_schedule(workspace).describe() == "daily"
    assert vault.due(workspace, start)
    taken = vault.run_if_due(workspace, now=start)
    assert taken is not None and taken.snapshot.trigger == "scheduled"
    assert vault.run_if_due(workspace, now=start + timedelta(hours=23)) is None
    assert vault.due(workspace, start + timedelta(hours=24))

    vault.set_schedule(workspace, vault.parse_schedule("off"))
    assert not vault.due(workspace, start + timedelta(days=30))
    vault.set_schedule(workspace, vault.parse_schedule("6h"))
    assert vault.due(workspace, start + timedelta(hours=6))
    with pytest.raises(vault.VaultError, match="use daily"):
        vault.parse_schedule("sometimes")


# --- data minimisation ------------------------------------------------------------------------


def test_minimise_removes_old_working_partitions_but_not_held_or_recent(workspace):
    ws = workspace
    today = datetime(2026, 6, 30, tzinfo=UTC)
    for day in ("2026-05-01", "2026-05-10", "2026-06-20"):
        _write_partition(ws.scored, day)
        _write_partition(ws.features, day)
    _write_partition(ws.curated, "2026-05-01")
    hold = place_legal_hold(ws, "scored", "dt=2026-05-10", "case 42", "investigator")

    result = minimise(ws, now=today)

    assert sorted(result.removed) == [
        "features/dt=2026-05-01",
        "features/dt=2026-05-10",
        "scored/dt=2026-05-01",
    ]
    assert result.held == [f"scored/dt=2026-05-10 ({hold.hold_id})"]
    assert sorted(p.name for p in ws.scored.iterdir()) == ["dt=2026-05-10", "dt=2026-06-20"]
    assert (ws.curated / "dt=2026-05-01").exists()  # not asked for
    entry = audit.list_entries(ws, action="retention.minimise")[-1]
    assert entry["details"]["removed"] == result.removed
    assert audit.verify(ws).ok


def test_minimise_refuses_records_and_periods_shorter_than_the_rule(workspace):
    from pipelines.compliance.policy import PolicyError

    with pytest.raises(PolicyError, match="cannot be minimised"):
        minimise(workspace, zones=("records",))
    with pytest.raises(PolicyError, match="retained 35 days"):
        minimise(workspace, zones=("scored",), older_than_days=7)


def test_retention_rules_are_configurable_above_the_legal_floor(populated: Workspace, capsys):
    from pipelines.compliance.policy import PolicyError, retention_rules, set_retention

    assert retention_rules(populated)["records"] == BSA_RETENTION_DAYS
    with pytest.raises(PolicyError, match=f"at least {BSA_RETENTION_DAYS} days"):
        set_retention(populated, {"records": 365})
    set_retention(populated, {"curated": 90})
    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    created = datetime.fromisoformat(snapshot.created_at)
    assert snapshot.retain_until == (created + timedelta(days=90)).isoformat()
    code = cli_main(
        ["backup", "retention", "--set", "cases_db=30", "--workdir", str(populated.root)]
    )
    assert code == 2  # a user mistake, refused with the legal floor named
    assert f"at least {BSA_RETENTION_DAYS} days" in capsys.readouterr().err


def test_cli_create_list_restore_and_run_scheduled(populated: Workspace, tmp_path, capsys):
    root = ["--workdir", str(populated.root)]
    assert cli_main(["backup", "create", "--zone", "curated", *root]) == 0
    assert "stored" in capsys.readouterr().out
    assert cli_main(["backup", "list", "--json", *root]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    target = tmp_path / "cli-restore"
    assert cli_main(["backup", "restore", listed["snapshot_id"], "--to", str(target), *root]) == 0
    assert _zone_files(target, target / "s3/lake/curated/transactions") == _zone_files(
        populated.root, populated.curated
    )
    assert cli_main(["backup", "run-scheduled", *root]) == 0  # the snapshot just taken is fresh
    assert "no backup due" in capsys.readouterr().out
    assert cli_main(["backup", "restore", "nope", "--to", str(tmp_path / "x"), *root]) == 2
    assert "no snapshot 'nope'" in capsys.readouterr().err


# --- forged manifests and anchors: only authenticated dates are trusted ---------------------


def _manifest(ws: Workspace, snapshot_id: str) -> Path:
    return ws.vault / "snapshots" / f"{snapshot_id}.json"


def _unlock_early(body: dict) -> None:
    for entry in body["entries"]:
        entry["retain_until"] = "2020-01-01T00:00:00+00:00"
    body["retain_until"] = "2020-01-01T00:00:00+00:00"


def _assert_locked_snapshot_survives(ws: Workspace, snapshot_id: str, objects: set[str]) -> None:
    result = vault.prune(ws)
    assert snapshot_id in [sid for sid, _ in result.kept_untrusted]
    assert _manifest(ws, snapshot_id).exists()
    assert all(vault.object_path(ws, sha).exists() for sha in objects)
    with pytest.raises(vault.SnapshotLocked, match="cannot be deleted"):
        vault.delete_snapshots(ws, [snapshot_id])
    assert _manifest(ws, snapshot_id).exists()
    assert audit.list_entries(ws, action="backup.delete.refused")[-1]["subject"] == snapshot_id


def test_retain_until_edited_with_the_checksum_recomputed_is_not_trusted(populated, capsys):
    import hashlib

    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    path = _manifest(populated, snapshot.snapshot_id)
    body = json.loads(path.read_text())
    _unlock_early(body)
    rest = {k: v for k, v in body.items() if k != "manifest_mac"}
    body["manifest_mac"] = hashlib.sha256(audit.canonical_json(rest)).hexdigest()
    path.write_text(json.dumps(body))

    report = vault.verify_snapshots(populated)

    assert not report.ok and any("MAC does not match" in p for p in report.problems)
    assert cli_main(["backup", "verify", "--workdir", str(populated.root)]) == 1
    assert f"{snapshot.snapshot_id}.json was altered" in capsys.readouterr().out
    _assert_locked_snapshot_survives(
        populated, snapshot.snapshot_id, {e.sha256 for e in snapshot.entries}
    )


def test_a_manifest_re_signed_with_another_key_is_not_trusted(populated):
    from pipelines.compliance.signing import RecordsKey

    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    path = _manifest(populated, snapshot.snapshot_id)
    body = json.loads(path.read_text())
    _unlock_early(body)
    rest = {k: v for k, v in body.items() if k != "manifest_mac"}
    forger = RecordsKey(b"f" * 32)
    body["manifest_mac"] = forger.mac("snapshot-manifest", audit.canonical_json(rest))
    path.write_text(json.dumps(body))

    assert any("MAC does not match" in p for p in vault.verify_snapshots(populated).problems)
    _assert_locked_snapshot_survives(
        populated, snapshot.snapshot_id, {e.sha256 for e in snapshot.entries}
    )


def _as_legacy(path: Path, edit=None) -> None:
    """Rewrite a manifest as the previous version wrote it: format 1, plain checksum."""
    import hashlib

    body = json.loads(path.read_text())
    for key in ("manifest_mac", "key_id", "audit_head", "token_key_ids"):
        body.pop(key, None)
    body["format"] = 1
    if edit:
        edit(body)
    body["manifest_sha256"] = hashlib.sha256(audit.canonical_json(body)).hexdigest()
    path.write_text(json.dumps(body))


def test_a_legacy_manifest_is_unauthenticated_kept_and_adopted_without_shortening(
    populated, capsys
):
    snapshot = vault.create_snapshot(populated, zones=("curated",)).snapshot
    _as_legacy(_manifest(populated, snapshot.snapshot_id), _unlock_early)  # or a downgrade

    report = vault.verify_snapshots(populated)
    assert report.legacy == [snapshot.snapshot_id] and not report.problems and not report.ok
    assert cli_main(["backup", "verify", "--workdir", str(populated.root)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().out
    _assert_locked_snapshot_survives(
        populated, snapshot.snapshot_id, {e.sha256 for e in snapshot.entries}
    )

    before = datetime.now(UTC)
    assert vault.adopt_legacy(populated) == [snapshot.snapshot_id]

    adopted = vault.load_snapshot(populated, snapshot.snapshot_id)
    assert adopted.authenticated and vault.verify_snapshots(populated).ok
    assert datetime.fromisoformat(adopted.retain_until) >= before + timedelta(days=35, seconds=-1)
    assert [e["subject"] for e in audit.list_entries(populated, action="backup.adopt")] == [
        snapshot.snapshot_id
    ]


def test_a_manifest_deleted_outside_fraudops_is_named(populated):
    kept = vault.create_snapshot(populated, zones=("curated",)).snapshot
    gone = vault.create_snapshot(populated, zones=("features",)).snapshot
    _manifest(populated, gone.snapshot_id).unlink()

    report = vault.verify_snapshots(populated)

    assert [p for p in report.problems if "deleted outside fraudops" in p] == [
        next(p for p in report.problems if gone.snapshot_id in p)
    ]
    assert kept.snapshot_id not in "".join(report.problems)


def test_snapshots_anchor_the_audit_head_and_a_truncated_trail_fails_both_verifies(
    populated, capsys
):
    ws = populated
    old_head = audit.head_path(ws).read_bytes()  # saved by the forger at seq 1
    old_lines = audit.audit_log_path(ws).read_bytes()
    audit.record(ws, "model.approve", "risk", "arn:pkg/1")
    snapshot = vault.create_snapshot(ws, zones=("curated",)).snapshot
    assert snapshot.audit_head["seq"] == 3  # the trail as it was when the snapshot was taken
    assert vault.verify_snapshots(ws).ok

    # The forger cuts the approval and what followed, and puts back the head of back then.
    audit.audit_log_path(ws).write_bytes(old_lines)
    audit.head_path(ws).write_bytes(old_head)
    assert audit.verify(ws).ok  # without the anchor, nothing would tell

    assert cli_main(["audit", "verify", "--workdir", str(ws.root)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and f"snapshot {snapshot.snapshot_id} recorded the trail at seq 3" in out
    report = vault.verify_snapshots(ws)
    assert any("audit trail broken" in p for p in report.problems)


def test_the_ingest_ledger_zone_is_where_ingestion_keeps_it(workspace: Workspace):
    from pipelines.data.ingest.layout import LakeLayout
    from pipelines.data.ingest.ledger import Ledger

    layout = LakeLayout.for_workspace(workspace)
    assert Path(Ledger(layout.fs, layout.state).root) == zone_root(workspace, "ingest_ledger")


def test_a_hand_edited_retention_file_cannot_go_below_the_legal_floor(workspace: Workspace):
    from pipelines.compliance.policy import retention_rules

    (workspace.vault).mkdir(parents=True, exist_ok=True)
    (workspace.vault / "retention.json").write_text('{"records": 1, "curated": 0}')
    rules = retention_rules(workspace)
    assert rules["records"] == BSA_RETENTION_DAYS and rules["curated"] == 1


def test_backup_verify_reports_a_forged_trail_and_does_not_extend_it(populated, capsys):
    vault.create_snapshot(populated, zones=("curated",))
    path = audit.audit_log_path(populated)
    last = json.loads(path.read_text().splitlines()[-1])
    forged = {**last, "seq": last["seq"] + 1, "action": "backup.delete", "prev_hash": last["hash"]}
    forged["hash"] = audit.entry_hash(forged)
    with path.open("a") as handle:
        handle.write(audit.canonical_json(forged).decode() + "\n")
    lines_before = path.read_text()

    assert cli_main(["backup", "verify", "--workdir", str(populated.root)]) == 1

    out = capsys.readouterr().out
    assert "audit trail broken" in out and "not recorded in the audit trail" in out
    assert path.read_text() == lines_before
