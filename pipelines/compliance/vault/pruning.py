"""Delete and prune snapshots, honouring retain-until locks and legal holds; collect garbage.

Deleting a snapshot before every entry's retain-until date passes is refused
and audited. ``prune`` drops expired entries (keeping anything under legal
hold) and garbage-collects objects no manifest references.

Only authenticated retention dates are trusted: a manifest whose MAC does not
verify (edited, or forged without the records key) or a legacy one (written by
an older version, unsigned) is never pruned or deleted, and its objects are
kept. ``adopt_legacy`` re-signs legacy manifests with retention no shorter than
today's rules, so adopting can lengthen a lock but never shorten one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from pipelines.compliance import audit
from pipelines.compliance.policy import (
    BSA_RETENTION_DAYS,
    LegalHold,
    held_by,
    legal_holds,
    retention_rules,
)
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
    load_snapshot,
    manifest_path,
    read_manifest_json,
    snapshot_ids,
    write_manifest,
)
from pipelines.core.workspace import Workspace

LEGACY_NOTE = (
    "legacy manifest (written before manifests were signed): its retention dates are not "
    "trusted; 'fraudops backup adopt' re-signs it"
)


@dataclass
class PruneResult:
    entries_expired: int = 0
    snapshots_removed: list[str] = field(default_factory=list)
    objects_removed: int = 0
    bytes_freed: int = 0
    kept_locked: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, retain_until)
    kept_held: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, hold id)
    kept_untrusted: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, why)


def _blocking_hold(snapshot: Snapshot, holds: list[LegalHold]) -> LegalHold | None:
    for entry in snapshot.entries:
        hold = held_by(holds, entry.zone, entry.path, snapshot.snapshot_id)
        if hold:
            return hold
    return None


def _trusted(ws: Workspace, snapshot_id: str) -> tuple[Snapshot | None, str]:
    """(snapshot, "") if its manifest authenticates, else (None, why its dates are not trusted).

    ``VaultError`` if there is no such snapshot at all.
    """
    read_manifest_json(ws, snapshot_id)  # absent or unparseable: VaultError
    try:
        snapshot = load_snapshot(ws, snapshot_id)
    except VaultError as exc:
        return None, str(exc)
    return (snapshot, "") if snapshot.authenticated else (None, LEGACY_NOTE)


def delete_snapshots(
    ws: Workspace, ids: Iterable[str], actor: str | None = None, now: datetime | None = None
) -> PruneResult:
    """Delete whole snapshots on request; refused (and audited) while locked, held or untrusted.

    Every id is checked before anything is deleted, so a refusal deletes nothing.
    """
    moment = now or utc_now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    ids = list(ids)
    with vault_lock(ws):
        holds = legal_holds(ws)
        snapshots = []
        for snapshot_id in ids:
            snapshot, untrusted = _trusted(ws, snapshot_id)
            if snapshot is None:
                _refuse(ws, snapshot_id, actor, "", None, (
                    f"snapshot {snapshot_id} cannot be deleted: {untrusted}"
                ))
            assert snapshot is not None
            _refuse_if_protected(ws, snapshot, holds, moment, actor)
            snapshots.append(snapshot)
        paths = [manifest_path(ws, s.snapshot_id) for s in snapshots]
        with audit.committing(
            ws, "backup.delete", ",".join(ids), {"snapshots": ids}, actor=actor, when_absent=paths
        ) as commit:
            for path in paths:
                path.unlink()
            result.snapshots_removed.extend(ids)
            _collect_garbage(ws, result)
            commit.outcome.update(
                objects_removed=result.objects_removed, bytes_freed=result.bytes_freed
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
    _refuse(ws, snapshot.snapshot_id, actor, locked_until, hold, message)


def _refuse(
    ws: Workspace,
    snapshot_id: str,
    actor: str,
    retain_until: str,
    hold: LegalHold | None,
    message: str,
) -> None:
    audit.record(
        ws,
        "backup.delete.refused",
        actor,
        snapshot_id,
        {"retain_until": retain_until, "hold": hold.hold_id if hold else "", "reason": message},
    )
    raise SnapshotLocked(message)


def prune(ws: Workspace, actor: str | None = None, now: datetime | None = None) -> PruneResult:
    """Drop expired entries (not under legal hold), empty snapshots, then unreferenced objects.

    Only snapshots whose manifest authenticates are pruned; the others are kept
    whole and listed in ``kept_untrusted``.
    """
    moment = now or utc_now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    with vault_lock(ws):
        holds = legal_holds(ws)
        plans: list[tuple[Snapshot, Snapshot | None]] = []  # (old, rewritten or None: removed)
        for snapshot_id in snapshot_ids(ws):
            snapshot, untrusted = _trusted(ws, snapshot_id)
            if snapshot is None:
                result.kept_untrusted.append((snapshot_id, untrusted))
                continue
            plan = _plan_snapshot(snapshot, holds, moment, result)
            if plan is not snapshot:
                plans.append((snapshot, plan))
        removed = [manifest_path(ws, old.snapshot_id) for old, new in plans if new is None]
        details = {
            "entries_expired": result.entries_expired,
            "snapshots_removed": result.snapshots_removed,
            "kept_held": [hold for _, hold in result.kept_held],
            "kept_untrusted": [snapshot_id for snapshot_id, _ in result.kept_untrusted],
        }
        with audit.committing(
            ws, "backup.prune", "vault", details, actor=actor, when_absent=removed
        ) as commit:
            for old, new in plans:
                if new is None:
                    manifest_path(ws, old.snapshot_id).unlink()
                else:
                    write_manifest(ws, new)
            clean_tmp(ws)
            _collect_garbage(ws, result)
            commit.outcome.update(
                objects_removed=result.objects_removed, bytes_freed=result.bytes_freed
            )
    return result


def _plan_snapshot(
    snapshot: Snapshot, holds: list[LegalHold], moment: datetime, result: PruneResult
) -> Snapshot | None:
    """The snapshot after expiry: unchanged, rewritten with fewer entries, or None (removed)."""
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
        return snapshot
    result.entries_expired += len(expired)
    if not kept:
        result.snapshots_removed.append(snapshot.snapshot_id)
        return None
    note = {
        "pruned_at": iso(moment),
        "zones": sorted({e.zone for e in expired}),
        "entries": len(expired),
    }
    result.kept_locked.append((snapshot.snapshot_id, max(e.retain_until for e in kept)))
    return replace(snapshot, entries=tuple(kept), pruned=snapshot.pruned + (note,))


def _collect_garbage(ws: Workspace, result: PruneResult) -> None:
    """Remove objects no manifest references (the vault lock must be held).

    Every manifest counts, authenticated or not: an altered manifest's objects
    are kept until someone has looked at it. An unparseable one stops the collection.
    """
    referenced: set[str] = set()
    for snapshot_id in snapshot_ids(ws):
        try:
            referenced.update(e["sha256"] for e in read_manifest_json(ws, snapshot_id)["entries"])
        except (VaultError, KeyError, TypeError) as exc:
            raise VaultError(
                f"manifest {snapshot_id}.json is unreadable ({exc}); run 'fraudops backup "
                "verify' before pruning: its objects cannot be told from garbage"
            ) from None
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


def adopt_legacy(ws: Workspace, actor: str | None = None, now: datetime | None = None) -> list[str]:
    """Re-sign legacy manifests whose checksum holds; return their ids (audited).

    Each entry's retain-until becomes the later of what the manifest claims and
    now plus its zone's rule, so adopting never shortens a lock; manifests that
    fail their checksum are left alone (``backup verify`` names them).
    """
    moment = now or utc_now()
    actor = actor or audit.default_actor()
    rules = retention_rules(ws)
    adopted: list[str] = []
    with vault_lock(ws):
        for snapshot_id in snapshot_ids(ws):
            try:
                snapshot = load_snapshot(ws, snapshot_id)
            except VaultError:
                continue
            if snapshot.authenticated:
                continue
            entries = tuple(
                replace(e, retain_until=max(
                    e.retain_until,
                    iso(moment + timedelta(days=rules.get(e.zone, BSA_RETENTION_DAYS))),
                    key=datetime.fromisoformat,
                ))
                for e in snapshot.entries
            )
            note = {"adopted_at": iso(moment), "adopted_by": actor}
            adopted_snapshot = replace(
                snapshot, entries=entries, pruned=snapshot.pruned + (note,), authenticated=True
            )
            with audit.committing(
                ws, "backup.adopt", snapshot_id, {"retain_until": adopted_snapshot.retain_until},
                actor=actor,
            ):
                write_manifest(ws, adopted_snapshot)
            adopted.append(snapshot_id)
    return adopted
