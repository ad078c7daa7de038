"""Restore a snapshot into a new directory, verifying every byte, all or nothing."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.compliance import audit
from pipelines.compliance.vault.layout import (
    VaultError,
    copy_hashing,
    object_path,
    progress_bar,
    vault_lock,
)
from pipelines.compliance.vault.manifest import Entry, Snapshot, load_snapshot
from pipelines.core.workspace import Workspace


@dataclass
class RestoreResult:
    snapshot_id: str
    target: Path
    files: int = 0
    bytes_restored: int = 0


def restore_snapshot(
    ws: Workspace,
    snapshot_id: str,
    target: Path,
    zones: Sequence[str] | None = None,
    actor: str | None = None,
    progress: bool = False,
) -> RestoreResult:
    """Write the snapshot as a workspace-shaped tree under ``target``, verifying every byte.

    Files are written into a hidden sibling directory that is renamed to
    ``target`` only when every object has been copied and matched its hash,
    so a failed restore leaves nothing half-written.
    """
    target = Path(target).resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise VaultError(f"restore target {target} exists and is not empty; choose a new directory")
    snapshot = load_snapshot(ws, snapshot_id)
    entries = [e for e in snapshot.entries if zones is None or e.zone in zones]
    if zones and not entries:
        raise VaultError(
            f"snapshot {snapshot_id} holds nothing of zone(s) {', '.join(zones)}; it has "
            f"{', '.join(sorted({e.zone for e in snapshot.entries})) or 'no files'}"
        )
    staging = target.parent / f".{target.name}.restore-{secrets.token_hex(4)}"
    result = RestoreResult(snapshot_id, target)
    try:
        with vault_lock(ws, exclusive=False), progress_bar(progress) as bar:
            task = bar.add_task("restoring", total=sum(e.size for e in entries))
            for entry in entries:
                _restore_entry(ws, snapshot, entry, staging)
                result.files += 1
                result.bytes_restored += entry.size
                bar.advance(task, entry.size)
        staging.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    audit.record(
        ws,
        "backup.restore",
        actor,
        snapshot_id,
        {"target": str(target), "files": result.files, "bytes": result.bytes_restored},
    )
    return result


def _restore_entry(ws: Workspace, snapshot: Snapshot, entry: Entry, staging: Path) -> None:
    source = object_path(ws, entry.sha256)
    if not source.exists():
        raise VaultError(
            f"snapshot {snapshot.snapshot_id}: {entry.zone}/{entry.path}: object "
            f"{entry.sha256[:2]}/{entry.sha256[2:]} is missing; run 'fraudops backup verify'"
        )
    dest = staging / snapshot.zone_roots[entry.zone] / entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy_hashing(source, dest) != entry.sha256:
        raise VaultError(
            f"snapshot {snapshot.snapshot_id}: {entry.zone}/{entry.path}: object "
            f"{entry.sha256[:2]}/{entry.sha256[2:]} is altered; restore stopped"
        )
    if entry.mtime_ns:
        os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))
