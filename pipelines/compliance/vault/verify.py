"""Verify snapshots: re-hash every object they reference and name each missing or altered one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.compliance.vault.layout import (
    VaultError,
    object_path,
    progress_bar,
    vault_lock,
)
from pipelines.compliance.vault.manifest import Snapshot, load_snapshot, snapshot_ids
from pipelines.core.fileio import sha256_file
from pipelines.core.workspace import Workspace


@dataclass
class VerifyReport:
    """Every missing or altered object, named with the snapshot and file it belongs to."""

    snapshots: int = 0
    objects: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


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
    """Re-hash every object the snapshots reference (each distinct object once)."""
    report = VerifyReport()
    with vault_lock(ws, exclusive=False):
        snapshots: list[Snapshot] = []
        for snapshot_id in snapshot_list or snapshot_ids(ws):
            try:
                snapshots.append(load_snapshot(ws, snapshot_id))
            except VaultError as exc:
                report.problems.append(str(exc))
        report.snapshots = len(snapshots)
        unique = {e.sha256: e.size for s in snapshots for e in s.entries}
        status: dict[str, str] = {}
        with progress_bar(progress) as bar:
            task = bar.add_task("verifying", total=sum(unique.values()))
            for sha256, size in unique.items():
                status[sha256] = _object_status(ws, sha256, size)
                report.objects += 1
                report.bytes_checked += size
                bar.advance(task, size)
    for snapshot in snapshots:
        for entry in snapshot.entries:
            state = status[entry.sha256]
            if state != "ok":
                report.problems.append(
                    f"snapshot {snapshot.snapshot_id}: {entry.zone}/{entry.path}: object "
                    f"{entry.sha256[:2]}/{entry.sha256[2:]} is {state}"
                )
    return report
