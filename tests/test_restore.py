"""Restore is disaster recovery: a restored snapshot is a complete, independent workspace.

Its catalog reads its own lake (never the original's), it holds the ingest
ledger, registry, cases and audit trail, the tokenisation key is not in the
snapshot but must be given back and match, so re-ingesting adds nothing; live
workspaces and their zones are refused as targets unless replacing on purpose.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.landing import row, write_csv

from pipelines.cli.main import main as cli_main
from pipelines.compliance import audit, vault
from pipelines.compliance.signing import key_path
from pipelines.core import keys
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import ingest
from pipelines.data.lake import catalog, run_query
from pipelines.data.lake.catalog import register_table

DAYS = ("2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z", "2024-03-03T10:00:00Z")


def _drop(path: Path, prefix: str, n: int) -> Path:
    rows = [row(f"{prefix}{i}", timestamp=DAYS[i % 3], customer_id=f"C{i % 4}") for i in range(n)]
    rows.append(row(f"{prefix}-bad", amount="-1"))  # one quarantined row per drop
    return write_csv(path, rows)


def _scored(ws: Workspace, day: str, n: int) -> None:
    """A table another unit writes under the lake and registers in the catalog."""
    directory = ws.scored / f"dt={day}"
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"transaction_id": [f"{day}-{i}" for i in range(n)], "score": [0.5] * n})
    pq.write_table(table, directory / "part-0.parquet")
    register_table(ws, "scored", ws.scored)


def _count(ws: Workspace, table: str) -> int:
    return run_query(ws, f"SELECT count(*) AS n FROM {table}").to_pylist()[0]["n"]


def _token_key_file(ws: Workspace) -> Path:
    return ws.secrets / keys.TOKEN_KEY_FILENAME


SNAPSHOTS: dict[Path, str] = {}  # workspace root -> the snapshot the fixture took


@pytest.fixture
def source(workspace: Workspace, tmp_path: Path, monkeypatch) -> Workspace:
    """A workspace with a snapshot of 30 rows (+1 quarantined) and, after it, 20 more rows."""
    monkeypatch.delenv(keys.TOKEN_KEY_ENV, raising=False)
    ingest(workspace, [_drop(tmp_path / "landing" / "a.csv", "a", 30)])
    _scored(workspace, "2024-03-01", 7)
    for db, table in ((workspace.registry_db, "packages"), (workspace.cases_db, "cases")):
        with sqlite3.connect(db) as con:
            con.execute(f"CREATE TABLE {table} (id TEXT)")
            con.execute(f"INSERT INTO {table} VALUES ('kept')")
    SNAPSHOTS[workspace.root] = vault.create_snapshot(workspace).snapshot.snapshot_id
    ingest(workspace, [_drop(tmp_path / "landing" / "b.csv", "b", 20)])
    _scored(workspace, "2024-03-02", 5)
    assert (_count(workspace, "transactions"), _count(workspace, "scored")) == (50, 12)
    return workspace


def _restore(ws: Workspace, target: Path, **options) -> vault.RestoreResult:
    options.setdefault("token_key", keys.read_key_file(_token_key_file(ws)))
    return vault.restore_snapshot(ws, SNAPSHOTS[ws.root], target, **options)


def test_a_restored_snapshot_answers_with_its_own_rows_and_reingest_adds_nothing(
    source: Workspace, tmp_path: Path
):
    target = tmp_path / "dr"
    _restore(source, target)
    restored = Workspace.open(target)

    assert _count(restored, "transactions") == 30  # the snapshot's rows, not the live 50
    assert _count(restored, "quarantine") == 1
    assert _count(restored, "scored") == 7  # a registered table follows the workspace too
    assert _count(restored, "ingestion_runs") == 1
    assert (_count(source, "transactions"), _count(source, "scored")) == (50, 12)  # untouched

    again = ingest(restored, [tmp_path / "landing" / "a.csv"])

    assert (again.rows_curated, again.rows_quarantined) == (0, 0)
    assert again.token_key_id == audit.list_entries(source, action="ingest.run")[0]["details"][
        "token_key_id"
    ]
    assert _count(restored, "transactions") == 30
    newer = ingest(restored, [tmp_path / "landing" / "b.csv"])  # what came after the snapshot
    assert newer.rows_curated == 20 and _count(restored, "transactions") == 50


def test_a_restored_workspace_is_complete_and_verifies_on_its_own(
    source: Workspace, tmp_path: Path
):
    target = tmp_path / "dr"
    result = _restore(source, target)
    restored = Workspace.open(target)

    for db, table in ((restored.registry_db, "packages"), (restored.cases_db, "cases")):
        with sqlite3.connect(db) as con:
            assert con.execute(f"SELECT id FROM {table}").fetchall() == [("kept",)]
    assert any((restored.state_dir / "ingest" / "ledger").glob("ing-*.parquet"))
    assert audit.verify(restored).ok
    actions = [e["action"] for e in audit.list_entries(restored)]
    assert actions[:2] == ["audit.open", "ingest.run"] and actions[-1] == "backup.restored"
    assert vault.verify_snapshots(restored).ok  # its vault starts empty, and its trail says so
    for secret in (_token_key_file(restored), key_path(restored)):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    restore_entry = audit.list_entries(source, action="backup.restore")[-1]
    assert restore_entry["details"]["target"] == str(target)
    assert restore_entry["details"]["files"] == result.files
    # The catalog stores paths relative to its workspace, and opened under the
    # restored root its views are rebuilt for it: nothing reads the original lake.
    con = catalog.connect(restored)
    try:
        stored = [path for (path,) in con.execute("SELECT path FROM _fraudops_tables").fetchall()]
        views = [sql for (sql,) in con.execute(
            "SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall()]  # fmt: skip
    finally:
        con.close()
    assert stored == ["s3/lake/scored/transactions"]
    assert views and all(str(target) in sql and str(source.root) not in sql for sql in views)


def test_the_tokenisation_key_is_never_in_a_snapshot(source: Workspace):
    key = keys.read_key_file(_token_key_file(source))
    texts = {key, key.hex().encode(), _token_key_file(source).read_bytes().strip()}
    for path in (source.vault / "objects").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(text in data for text in texts), path


def test_restore_asks_for_the_token_key_and_checks_its_id(
    source: Workspace, tmp_path: Path, capsys
):
    expected = audit.list_entries(source, action="ingest.run")[0]["details"]["token_key_id"]
    with pytest.raises(vault.VaultError, match=rf"key id {expected}.*--key-file"):
        _restore(source, tmp_path / "no-key", token_key=None)
    wrong = b"another key, same length as any!"
    with pytest.raises(vault.VaultError, match=rf"written with {expected}"):
        _restore(source, tmp_path / "wrong-key", token_key=wrong)
    assert not (tmp_path / "no-key").exists() and not (tmp_path / "wrong-key").exists()

    root = ["--workdir", str(source.root)]
    snapshot_id = SNAPSHOTS[source.root]
    assert cli_main(["backup", "restore", snapshot_id, "--to", str(tmp_path / "c"), *root]) == 2
    assert "--key-file" in capsys.readouterr().err
    code = cli_main(["backup", "restore", snapshot_id, "--to", str(tmp_path / "c"),
                     "--key-file", str(_token_key_file(source)), *root])  # fmt: skip
    assert code == 0 and _count(Workspace.open(tmp_path / "c"), "transactions") == 30


@pytest.mark.parametrize(
    "where",
    ["curated zone", "under the root", "workspace root", "another workspace", "inside another"],
)
def test_restore_into_a_live_workspace_or_its_zones_is_refused(
    source: Workspace, tmp_path: Path, where: str
):
    other = Workspace.open(tmp_path / "other")
    audit.record(other, "case.note", "analyst", "case-1")  # a live workspace: it has records
    target, message = {
        "curated zone": (source.curated / "dt=2024-03-09", "its curated zone"),
        "under the root": (source.root / "restored", "inside the live workspace"),
        "workspace root": (source.root, "is a live workspace"),
        "another workspace": (other.root, "is a live workspace"),
        "inside another": (other.records / "x", "its records zone"),
    }[where]
    before = sorted(p.relative_to(source.root) for p in source.root.rglob("*"))
    with pytest.raises(vault.VaultError, match=message):
        _restore(source, target)
    assert sorted(p.relative_to(source.root) for p in source.root.rglob("*")) == before
    assert _count(source, "transactions") == 50


def test_restore_over_a_live_workspace_snapshots_what_it_replaces_first(
    source: Workspace, tmp_path: Path
):
    trail_before = audit.list_entries(source)
    result = _restore(source, source.root, replace=True)

    assert _count(source, "transactions") == 30 and _count(source, "scored") == 7
    replaced = vault.load_snapshot(source, result.replaced_snapshot_id)
    assert replaced.trigger == "pre-restore"
    restored = vault.load_snapshot(source, SNAPSHOTS[source.root])
    assert sum(1 for e in replaced.entries if e.zone == "curated") > sum(
        1 for e in restored.entries if e.zone == "curated"
    )
    # The trail is never rolled back: it keeps everything and says what happened.
    entries = audit.list_entries(source)
    assert entries[: len(trail_before)] == trail_before
    assert entries[-1]["action"] == "backup.restore" and entries[-1]["details"]["replaced"]
    assert audit.verify(source).ok and vault.verify_snapshots(source).ok
    # ... and what it replaced can itself be restored.
    vault.restore_snapshot(source, result.replaced_snapshot_id, tmp_path / "before",
                           token_key=keys.read_key_file(_token_key_file(source)))  # fmt: skip
    assert _count(Workspace.open(tmp_path / "before"), "transactions") == 50


def test_a_catalog_written_with_absolute_paths_is_re_rooted_when_restored(
    source: Workspace, tmp_path: Path
):
    con = catalog.connect(source, read_only=False)
    try:  # as catalogs were written before paths were stored relative
        con.execute("UPDATE _fraudops_tables SET path = ?", [str(source.scored)])
        con.execute("DELETE FROM _fraudops_meta")
    finally:
        con.close()
    snapshot_id = vault.create_snapshot(source).snapshot.snapshot_id
    _scored(source, "2024-03-03", 3)
    target = tmp_path / "dr"
    vault.restore_snapshot(source, snapshot_id, target,
                           token_key=keys.read_key_file(_token_key_file(source)))  # fmt: skip

    assert _count(Workspace.open(target), "scored") == 12
    assert _count(source, "scored") == 15
