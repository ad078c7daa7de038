"""Verify snapshots: their manifests authenticate, every object they reference is intact,
every snapshot the audit trail says exists does, and the trail still holds the heads they anchored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.compliance import audit
from pipelines.compliance.vault.layout import VaultError, object_path, progress_bar, vault_lock
from pipelines.compliance.vault.manifest import (
    Snapshot,
    audit_anchors,
    load_snapshot,
    snapshot_ids,
)
from pipelines.compliance.vault.restore import RESTORED_ACTION
from pipelines.core.fileio import sha256_file
from pipelines.core.workspace import Workspace


@dataclass
class VerifyReport:
    """Every altered manifest, missing or altered object, and unauthenticated (legacy) manifest."""

    snapshots: int = 0
    objects: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    legacy: list[str] = field(default_factory=list)  # snapshot ids with unsigned manifests

    @property
    def ok(self) -> bool:
        return not self.problems and not self.legacy


def _object_status(ws: Workspace, sha256: str, size: int) -> str:
    """'ok', 'missing' or 'altered' (size or content differ from the name)."""
    path = object_path(ws, sha256)
    if not path.exists():
        return "missing"
    if path.stat().st_size != size or sha256_file(path) != sha256:
        return "altered"
    return "ok"


def verify_snapshots(
    ws: Workspace, snapshot_list: Sequence[str] | None = None, progress: bool = False
) -> VerifyReport:
    """Re-hash every object the snapshots reference (each distinct object once).

    Without ``snapshot_list`` (all snapshots) it also checks that no snapshot
    recorded in the audit trail has vanished and that the trail still holds
    every head the snapshots anchored.
    """
    report = VerifyReport()
    with vault_lock(ws, exclusive=False):
        snapshots: list[Snapshot] = []
        for snapshot_id in snapshot_list or snapshot_ids(ws):
            try:
                snapshots.append(load_snapshot(ws, snapshot_id))
            except VaultError as exc:
                report.problems.append(str(exc))
        report.snapshots = len(snapshots)
        report.legacy = [s.snapshot_id for s in snapshots if not s.authenticated]
        unique = {e.sha256: e.size for s in snapshots for e in s.entries}
        status: dict[str, str] = {}
        with progress_bar(progress) as bar:
            task = bar.add_task("verifying", total=sum(unique.values()))
            for sha256, size in unique.items():
                status[sha256] = _object_status(ws, sha256, size)
                report.objects += 1
                report.bytes_checked += size
                bar.advance(task, size)
        if not snapshot_list:
            report.problems.extend(_vanished(ws, set(snapshot_ids(ws))))
    for snapshot in snapshots:
        for entry in snapshot.entries:
            state = status[entry.sha256]
            if state != "ok":
                report.problems.append(
                    f"snapshot {snapshot.snapshot_id}: {entry.zone}/{entry.path}: object "
                    f"{entry.sha256[:2]}/{entry.sha256[2:]} is {state}"
                )
    chain = audit.verify(ws, audit_anchors(snapshots))
    if chain.first_bad_seq is not None:
        report.problems.append(f"audit trail broken at seq {chain.first_bad_seq}: {chain.problem}")
    return report


def _vanished(ws: Workspace, present: set[str]) -> list[str]:
    """Snapshots the trail records as created and never as deleted, whose manifest is gone."""
    created: dict[str, int] = {}
    for entry in audit.list_entries(ws, action="backup"):
        action, details = entry["action"], entry["details"]
        if action == RESTORED_ACTION:
            created.clear()  # a restored workspace's vault starts empty
        elif action == "backup.create":
            created[entry["subject"]] = entry["seq"]
        elif action == "backup.delete":
            for snapshot_id in str(entry["subject"]).split(","):
                created.pop(snapshot_id, None)
        elif action == "backup.prune":
            for snapshot_id in details.get("snapshots_removed", ()):
                created.pop(snapshot_id, None)
    return [
        f"snapshot {snapshot_id} (created at audit seq {seq}) has no manifest: it was deleted "
        "outside fraudops"
        for snapshot_id, seq in created.items()
        if snapshot_id not in present
    ]
