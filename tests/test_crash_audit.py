"""Every commit audited, even across a crash: exactly one entry per committed ingest and backup.

Each crash point runs in a child process that dies with ``os._exit`` right
there (like kill -9: no ``finally``, no ``atexit``, the kernel drops its
locks), or is killed with SIGKILL while it waits at that point. The next run,
in this process, must leave exactly one ``ingest.run`` / ``backup.create``
entry per committed run, none for a run that did not commit, an
``audit.recover`` entry saying what was recovered, and no leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from fixtures.landing import row, write_csv

from pipelines.cli.main import main as cli_main
from pipelines.compliance import audit, vault
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import ingest

REPO_ROOT = Path(__file__).resolve().parent.parent

# The child: patch one function so the process dies (or waits to be killed) at a commit point.
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pipelines.compliance import audit, vault
    from pipelines.compliance.vault import snapshot
    from pipelines.core.workspace import Workspace
    from pipelines.data.ingest import ingest, ledger, writer
    from pipelines.model.registry import local as registry_local
    from pipelines.serving.deploy.local import LocalEndpointBackend

    job, point, how, root, source = sys.argv[1:6]

    def die():
        if how == "wait":
            print("at-crash-point", flush=True)
            time.sleep(120)
        os._exit(137)

    def before(module, name):
        real = getattr(module, name)
        def patched(*args, **kwargs):
            die()
        setattr(module, name, patched)

    def after(module, name, when=lambda *a, **k: True):
        real = getattr(module, name)
        def patched(*args, **kwargs):
            outcome = real(*args, **kwargs)
            if when(*args, **kwargs):
                die()
            return outcome
        setattr(module, name, patched)

    def recording(action):
        return lambda ws, act, *a, **k: act == action

    points = {
        ("approve", "before-commit"): lambda: before(registry_local, "mark_committed"),
        ("approve", "after-commit"): lambda: before(audit, "record"),
        ("deploy", "after-commit"): lambda: before(audit, "record"),
        ("ingest", "before-publish"): lambda: before(writer, "publish"),
        ("ingest", "before-ledger-commit"): lambda: before(ledger.Ledger, "commit"),
        ("ingest", "after-ledger-commit"): lambda: after(ledger.Ledger, "commit"),
        ("ingest", "after-audit-entry"): lambda: after(audit, "record", recording("ingest.run")),
        ("ingest", "after-finish"): lambda: after(writer, "finish"),
        ("backup", "before-manifest"): lambda: before(snapshot, "write_manifest"),
        ("backup", "after-manifest"): lambda: after(snapshot, "write_manifest"),
        ("backup", "after-audit-entry"): lambda: after(audit, "record", recording("backup.create")),
    }
    points[(job, point)]()
    ws = Workspace.open(root)
    if job == "ingest":
        ingest(ws, [source])
    elif job == "backup":
        vault.create_snapshot(ws)
    elif job == "approve":
        registry = registry_local.LocalModelRegistry.for_workspace(ws)
        registry.update_model_package(source, "Approved", "bob", "reviewed the evaluation")
    else:
        package = {"ModelPackageArn": source, "ModelPackageVersion": 1}
        LocalEndpointBackend(ws).skip(package, "rejected by the approver")
    """
)

INGEST_POINTS = [
    ("before-publish", False),
    ("before-ledger-commit", False),
    ("after-ledger-commit", True),
    ("after-audit-entry", True),
    ("after-finish", True),
]
BACKUP_POINTS = [("before-manifest", False), ("after-manifest", True), ("after-audit-entry", True)]


def _crash(ws: Workspace, tmp_path: Path, job: str, point: str, how: str, source: Path | str
           ) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}"}
    args = [sys.executable, str(script), job, point, how, str(ws.root), str(source)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             text=True)
    if how == "wait":
        try:
            assert child.stdout.readline().strip() == "at-crash-point", child.stderr.read()
        finally:
            child.send_signal(signal.SIGKILL)
    child.wait(timeout=120)
    assert child.returncode in (137, -signal.SIGKILL), child.stderr.read()


def _committed_ingestions(ws: Workspace) -> set[str]:
    ledger = ws.state_dir / "ingest" / "ledger"
    return {p.stem for p in ledger.glob("ing-*.parquet")}


def _leftovers(ws: Workspace) -> list[Path]:
    places = [ws.state_dir / "ingest" / "pending", ws.state_dir / "ingest" / "ledger",
              ws.logs / "ingest", audit.pending_dir(ws), ws.vault / "tmp"]  # fmt: skip
    return [p for place in places if place.exists() for p in place.iterdir()
            if p.name.startswith(("_tmp-", "op-", ".op-")) or place.name == "tmp"]  # fmt: skip


def _assert_exactly_once(ws: Workspace, action: str, committed: set[str]) -> Counter:
    counts = Counter(e["subject"] for e in audit.list_entries(ws, action=action)
                     if e["action"] == action)  # fmt: skip
    assert set(counts) == committed, (counts, committed)
    assert all(n == 1 for n in counts.values()), counts
    assert audit.verify(ws).ok
    return counts


@pytest.mark.parametrize(("point", "commits"), INGEST_POINTS)
def test_an_ingest_killed_at_each_commit_point_is_audited_exactly_once(
    workspace, tmp_path, point, commits
):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    before = _committed_ingestions(workspace)
    crashed = write_csv(tmp_path / "crashed.csv", [row("crashed")])

    _crash(workspace, tmp_path, "ingest", point, "exit", crashed)

    crashed_runs = _committed_ingestions(workspace) - before
    assert len(crashed_runs) == (1 if commits else 0)
    report = ingest(workspace, [write_csv(tmp_path / "next.csv", [row("next")])])

    _assert_exactly_once(workspace, "ingest.run", _committed_ingestions(workspace))
    assert report.ingestion_id in _committed_ingestions(workspace)
    assert not _leftovers(workspace)
    recoveries = audit.list_entries(workspace, action="audit.recover")
    if point in ("before-publish", "before-ledger-commit"):
        assert recoveries[-1]["details"]["abandoned"]  # the intent said so, nothing committed
        assert report.recovered  # and the lake rolled back the published files
    elif point == "after-ledger-commit":
        (recovered,) = [e for e in audit.list_entries(workspace, action="ingest.run")
                        if e["details"].get("recovered")]  # fmt: skip
        assert recovered["subject"] in crashed_runs
        assert recoveries[-1]["details"]["recovered"]
    elif point == "after-audit-entry":
        assert recoveries[-1]["details"]["cleared"]  # the entry was there: not written twice
    else:
        assert not recoveries


@pytest.mark.parametrize(("point", "commits"), BACKUP_POINTS)
def test_a_backup_killed_at_each_commit_point_is_audited_exactly_once(
    workspace, tmp_path, point, commits
):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    first = vault.create_snapshot(workspace).snapshot.snapshot_id

    _crash(workspace, tmp_path, "backup", point, "exit", tmp_path)

    assert len(vault.snapshot_ids(workspace)) == (2 if commits else 1)
    second = vault.create_snapshot(workspace).snapshot.snapshot_id

    _assert_exactly_once(workspace, "backup.create", set(vault.snapshot_ids(workspace)))
    assert {first, second} <= set(vault.snapshot_ids(workspace))
    assert not _leftovers(workspace)
    assert vault.verify_snapshots(workspace).ok
    recover = audit.list_entries(workspace, action="audit.recover")[-1]["details"]
    expected = {"before-manifest": "abandoned", "after-manifest": "recovered",
                "after-audit-entry": "cleared"}[point]  # fmt: skip
    assert recover[expected]


def test_an_ingest_killed_by_sigkill_after_its_commit_is_audited_once(workspace, tmp_path):
    crashed = write_csv(tmp_path / "crashed.csv", [row("a"), row("b")])
    _crash(workspace, tmp_path, "ingest", "after-ledger-commit", "wait", crashed)
    assert len(_committed_ingestions(workspace)) == 1
    assert audit.list_entries(workspace, action="ingest.run") == []  # killed before its entry

    audit.record(workspace, "case.note", "analyst", "case-1")  # any next action recovers it

    (entry,) = audit.list_entries(workspace, action="ingest.run")
    assert entry["details"]["recovered"] and entry["details"]["rows_curated"] == 2
    assert entry["subject"] in _committed_ingestions(workspace)
    report = ingest(workspace, [crashed])  # the lake side completes; nothing is added twice
    assert report.rows_curated == 0
    _assert_exactly_once(workspace, "ingest.run", _committed_ingestions(workspace))
    assert not _leftovers(workspace)


def test_a_backup_killed_by_sigkill_after_its_manifest_is_audited_once(workspace, tmp_path):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    _crash(workspace, tmp_path, "backup", "after-manifest", "wait", tmp_path)
    (snapshot_id,) = vault.snapshot_ids(workspace)
    assert audit.list_entries(workspace, action="backup.create") == []

    # Any next action recovers it: here 'backup verify', which records its own entry.
    assert cli_main(["backup", "verify", "--workdir", str(workspace.root)]) == 0

    (entry,) = audit.list_entries(workspace, action="backup.create")
    assert entry["subject"] == snapshot_id and entry["details"]["recovered"]


def test_leftovers_of_a_killed_ingest_are_cleaned_and_the_cleaning_audited(workspace, tmp_path):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    pending = workspace.state_dir / "ingest" / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    (pending / "_tmp-0123abcd.json").write_text('{"half": ')
    (workspace.state_dir / "ingest" / "ledger" / "_tmp-ing-x-1234.parquet").write_bytes(b"PAR1")
    (workspace.logs / "ingest" / "_tmp-feedbeef.json").write_text("{")

    ingest(workspace, [write_csv(tmp_path / "next.csv", [row("next")])])

    assert not _leftovers(workspace)
    (entry,) = audit.list_entries(workspace, action="ingest.recover")
    assert sorted(entry["details"]["actions"]) == [
        "removed leftover _tmp-0123abcd.json",
        "removed leftover _tmp-feedbeef.json",
        "removed leftover _tmp-ing-x-1234.parquet",
    ]


def test_a_planted_intent_is_rejected_not_recorded(workspace, tmp_path):
    audit.record(workspace, "case.note", "analyst", "case-1")
    forged = {"op_id": "op-forged", "action": "model.approve", "actor": "mallory",
              "subject": "arn:pkg/1", "details": {}, "written_at": "2026-01-01T00:00:00",
              "when": {"exists": ["s3"], "absent": []}, "key_id": "x", "mac": "00"}  # fmt: skip
    audit.pending_dir(workspace).mkdir(parents=True)
    (audit.pending_dir(workspace) / "op-forged.json").write_text(json.dumps(forged))

    audit.record(workspace, "case.note", "analyst", "case-2")

    assert audit.list_entries(workspace, action="model.approve") == []
    (recover,) = audit.list_entries(workspace, action="audit.recover")
    assert "op-forged.json" in recover["details"]["rejected"][0]
    assert not (audit.pending_dir(workspace) / "op-forged.json").exists()


def _package(ws: Workspace) -> str:
    from pipelines.model.registry import LocalModelRegistry
    from pipelines.serving.deploy.sample_model import create_request

    registry = LocalModelRegistry.for_workspace(ws)
    request = create_request("fraud-detection", "s3://artifacts/models/run-1/model.tar.gz")
    return registry.create_model_package(request, "alice")["ModelPackageArn"]


@pytest.mark.parametrize(("point", "commits"), [("before-commit", False), ("after-commit", True)])
def test_an_approval_killed_at_its_commit_is_audited_exactly_once(
    workspace, tmp_path, point, commits
):
    from pipelines.model.registry import LocalModelRegistry

    arn = _package(workspace)

    _crash(workspace, tmp_path, "approve", point, "exit", arn)

    status = LocalModelRegistry(workspace.registry_db).describe_model_package(arn)
    assert (status["ModelApprovalStatus"] == "Approved") is commits
    audit.record(workspace, "case.note", "analyst", "case-1")  # any next action recovers
    _assert_exactly_once(workspace, "model.approve", {arn} if commits else set())
    recover = audit.list_entries(workspace, action="audit.recover")[-1]["details"]
    assert recover["recovered" if commits else "abandoned"]
    if commits:
        (entry,) = audit.list_entries(workspace, action="model.approve")
        assert entry["actor"] == "bob" and entry["details"]["recovered"]


def test_a_deployment_record_killed_after_its_commit_is_audited_exactly_once(
    workspace, tmp_path
):
    arn = _package(workspace)
    _crash(workspace, tmp_path, "deploy", "after-commit", "exit", arn)
    audit.record(workspace, "case.note", "analyst", "case-1")
    _assert_exactly_once(workspace, "deploy.skip", {arn})
