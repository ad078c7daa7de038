"""Delete and prune snapshots, honouring retain-until locks and legal holds; collect garbage.

Deleting a snapshot before every entry's retain-until date passes is refused
and audited. ``prune`` drops expired entries (keeping anything under legal
hold) and garbage-collects objects no manifest references.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pipelines.compliance import audit
from pipelines.compliance.policy import LegalHold, held_by, legal_holds
from pipelines.compliance.vault.layout import (
    SnapshotLocked,
    VaultError,
    clean_tmp,
    iso,
    objects_dir,
    utc_now,
    vault_lock,
)
from pipelines.compliance.vault.manifest import (
    Snapshot,
    list_snapshots,
    load_snapshot,
    manifest_path,
    snapshot_ids,
    write_manifest,
)
from pipelines.core.workspace import Workspace


@dataclass
class PruneResult:
    entries_expired: int = 0
    snapshots_removed: list[str] = field(default_factory=list)
    objects_removed: int = 0
    bytes_freed: int = 0
    kept_locked: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, retain_until)
    kept_held: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, hold id)


def _blocking_hold(snapshot: Snapshot, holds: list[LegalHold]) -> LegalHold | None:
    for entry in snapshot.entries:
        hold = held_by(holds, entry.zone, entry.path, snapshot.snapshot_id)
        if hold:
            return hold
    return None


def delete_snapshots(
    ws: Workspace, ids: Iterable[str], actor: str | None = None, now: datetime | None = None
) -> PruneResult:
    """Delete whole snapshots on request; refused (and audited) while locked or held.

    Every id is checked before anything is deleted, so a refusal deletes nothing.
    """
    moment = now or utc_now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    with vault_lock(ws):
        snapshots = [load_snapshot(ws, snapshot_id) for snapshot_id in ids]
        holds = legal_holds(ws)
        for snapshot in snapshots:
            _refuse_if_protected(ws, snapshot, holds, moment, actor)
        for snapshot in snapshots:
            manifest_path(ws, snapshot.snapshot_id).unlink()
            result.snapshots_removed.append(snapshot.snapshot_id)
        _collect_garbage(ws, result)
    audit.record(
        ws,
        "backup.delete",
        actor,
        ",".join(result.snapshots_removed),
        {"objects_removed": result.objects_removed, "bytes_freed": result.bytes_freed},
    )
    return result


def _refuse_if_protected(
    ws: Workspace, snapshot: Snapshot, holds: list[LegalHold], moment: datetime, actor: str
) -> None:
    locked_until = snapshot.retain_until
    hold = _blocking_hold(snapshot, holds)
    if datetime.fromisoformat(locked_until) > moment:
        message = (
            f"snapshot {snapshot.snapshot_id} is locked until {locked_until} "
            "(retain-until from the zone retention rules); it cannot be deleted before then"
        )
    elif hold:
        message = (
            f"snapshot {snapshot.snapshot_id} is under legal hold {hold.hold_id} "
            f"({hold.reason}); release the hold first"
        )
    else:
        return
    audit.record(
        ws,
        "backup.delete.refused",
        actor,
        snapshot.snapshot_id,
        {"retain_until": locked_until, "hold": hold.hold_id if hold else "", "reason": message},
    )
    raise SnapshotLocked(message)


def prune(ws: Workspace, actor: str | None = None, now: datetime | None = None) -> PruneResult:
    """Drop expired entries (not under legal hold), empty snapshots, then unreferenced objects."""
    moment = now or utc_now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    with vault_lock(ws):
        holds = legal_holds(ws)
        for snapshot in list_snapshots(ws):
            _prune_snapshot(ws, snapshot, holds, moment, result)
        clean_tmp(ws)
        _collect_garbage(ws, result)
    audit.record(
        ws,
        "backup.prune",
        actor,
        "vault",
        {
            "entries_expired": result.entries_expired,
            "snapshots_removed": result.snapshots_removed,
            "objects_removed": result.objects_removed,
            "bytes_freed": result.bytes_freed,
            "kept_held": [hold for _, hold in result.kept_held],
        },
    )
    return result


def _prune_snapshot(
    ws: Workspace,
    snapshot: Snapshot,
    holds: list[LegalHold],
    moment: datetime,
    result: PruneResult,
) -> None:
    kept, expired = [], []
    for entry in snapshot.entries:
        hold = held_by(holds, entry.zone, entry.path, snapshot.snapshot_id)
        if datetime.fromisoformat(entry.retain_until) > moment:
            kept.append(entry)
        elif hold:
            kept.append(entry)
            result.kept_held.append((snapshot.snapshot_id, hold.hold_id))
        else:
            expired.append(entry)
    if not expired:
        result.kept_locked.append((snapshot.snapshot_id, snapshot.retain_until))
        return
    result.entries_expired += len(expired)
    if not kept:
        manifest_path(ws, snapshot.snapshot_id).unlink()
        result.snapshots_removed.append(snapshot.snapshot_id)
        return
    zones_expired = sorted({e.zone for e in expired})
    note = {"pruned_at": iso(moment), "zones": zones_expired, "entries": len(expired)}
    write_manifest(
        ws,
        Snapshot(
            snapshot.snapshot_id,
            snapshot.created_at,
            snapshot.created_by,
            snapshot.trigger,
            snapshot.zone_roots,
            tuple(kept),
            snapshot.pruned + (note,),
        ),
    )
    result.kept_locked.append((snapshot.snapshot_id, max(e.retain_until for e in kept)))


def _collect_garbage(ws: Workspace, result: PruneResult) -> None:
    """Remove objects no manifest references (the vault lock must be held)."""
    referenced = {e.sha256 for s in list_snapshots(ws) for e in s.entries}
    unreadable = len(snapshot_ids(ws)) - len(list_snapshots(ws))
    if unreadable:
        # An altered manifest still references objects we cannot see: keep everything.
        raise VaultError(
            f"{unreadable} manifest(s) are unreadable or altered; run 'fraudops backup verify' "
            "before pruning"
        )
    objects = objects_dir(ws)
    if not objects.exists():
        return
    for shard in objects.iterdir():
        for path in shard.iterdir():
            if shard.name + path.name not in referenced:
                result.bytes_freed += path.stat().st_size
                path.unlink()
                result.objects_removed += 1
        if not any(shard.iterdir()):
            shard.rmdir()
