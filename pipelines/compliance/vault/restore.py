"""Restore a snapshot: disaster recovery into a new workspace, or over a live one on request.

Into a new directory, all or nothing (written beside it, renamed into place
once every object matched its hash), the result is a complete, independent
workspace: the lake with its catalog (whose paths are relative, so it reads
the restored lake, not this one), the ingest ledger, registry, cases and audit
trail. Secrets are not in snapshots: the records key is copied from this
workspace, so the restored trail verifies and continues; the tokenisation key
(PCI DSS 3.6: never backed up) must be supplied and must have the key id the
snapshot's data was written with, so re-ingesting the same files adds nothing.

Refused: a target inside a live workspace (one of its zones, or anywhere under
its root) and a live workspace itself, unless ``replace=True``: then what the
restore replaces is first snapshotted into that workspace's own vault. Its
audit trail and legal holds are never rolled back (records are append-only):
the snapshot's other records are laid over the live ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.compliance import audit
from pipelines.compliance.locks import workspace_lock
from pipelines.compliance.policy import ALL_ZONES, DATABASE_ZONES, zone_root
from pipelines.compliance.signing import key_path, records_key
from pipelines.compliance.vault.layout import (
    VaultError,
    copy_hashing,
    object_path,
    progress_bar,
    vault_lock,
)
from pipelines.compliance.vault.manifest import Entry, Snapshot, load_snapshot
from pipelines.compliance.vault.snapshot import create_snapshot
from pipelines.core import keys
from pipelines.core.workspace import Workspace

# Any of these in a directory makes it a workspace root (the layout of Workspace).
_WORKSPACE_MARKERS = ("s3", "vault", "secrets", "state", "catalog.duckdb", "registry.sqlite")
# Records a restore over a live workspace never rolls back.
_LIVE_RECORDS = ("audit", "legal_holds")
# The first entry of a restored workspace's own trail: where it came from.
RESTORED_ACTION = "backup.restored"


@dataclass
class RestoreResult:
    snapshot_id: str
    target: Path
    files: int = 0
    bytes_restored: int = 0
    replaced_snapshot_id: str = ""  # the pre-restore snapshot of a replaced live workspace


def is_workspace(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _WORKSPACE_MARKERS)


def restore_snapshot(
    ws: Workspace,
    snapshot_id: str,
    target: Path,
    zones: Sequence[str] | None = None,
    actor: str | None = None,
    progress: bool = False,
    token_key: bytes | None = None,
    replace: bool = False,
) -> RestoreResult:
    """Restore ``snapshot_id`` to ``target``: a new workspace, or a live one with ``replace``.

    ``token_key`` is the tokenisation key the snapshot's data was written with
    (required when it holds ingested data; checked against its key id).
    """
    target = Path(target).expanduser().resolve()
    actor = actor or audit.default_actor()
    live = _check_target(ws, target, replace)
    snapshot = load_snapshot(ws, snapshot_id)
    entries = [e for e in snapshot.entries if zones is None or e.zone in zones]
    if zones and not entries:
        raise VaultError(
            f"snapshot {snapshot_id} holds nothing of zone(s) {', '.join(zones)}; it has "
            f"{', '.join(sorted({e.zone for e in snapshot.entries})) or 'no files'}"
        )
    existing = _existing_token_key(live) if live else None
    token_key = _checked_token_key(snapshot, token_key or _env_token_key(), existing)
    if live is None:
        result = _restore_new(ws, snapshot, entries, target, token_key, progress)
        restored = Workspace(target)
    else:
        result = _restore_over(ws, snapshot, entries, live, token_key, actor, progress)
        restored = live
    details = {
        "source_workspace": str(ws.root),
        "files": result.files,
        "bytes": result.bytes_restored,
        "zones": sorted({e.zone for e in entries}),
        "token_key_id": snapshot.token_key_ids[-1] if snapshot.token_key_ids else "",
        "pre_restore_snapshot": result.replaced_snapshot_id,
    }
    if live is None:
        audit.seal(restored, actor)  # a snapshot from an older version carries a legacy trail
        # The new workspace's own trail says where it came from (and where its
        # history of snapshots stops: its vault starts empty).
        audit.record(restored, RESTORED_ACTION, actor, snapshot_id, details)
    elif live.root != ws.root:
        audit.record(live, "backup.restore", actor, snapshot_id, {**details, "replaced": True})
    audit.record(
        ws, "backup.restore", actor, snapshot_id,
        {**details, "target": str(target), "replaced": live is not None},
    )
    return result


def _zone_of(live: Workspace, path: Path) -> str:
    for zone in ALL_ZONES:
        root = zone_root(live, zone)
        if path == root or root in path.parents:
            return zone
    return ""


def _check_target(ws: Workspace, target: Path, replace: bool) -> Workspace | None:
    """The live workspace to restore over (``replace``), None for a new one; refuse the rest."""
    for ancestor in target.parents:
        if ancestor == ws.root or is_workspace(ancestor):
            zone = _zone_of(Workspace(ancestor), target)
            where = f" (its {zone} zone)" if zone else ""
            raise VaultError(
                f"restore target {target} is inside the live workspace {ancestor}{where}; "
                "restore into a new directory outside any workspace"
            )
    if target == ws.root or is_workspace(target):
        if not replace:
            raise VaultError(
                f"restore target {target} is a live workspace; restore into a new directory, "
                "or pass --replace to restore over it (what it replaces is snapshotted first)"
            )
        return Workspace(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise VaultError(f"restore target {target} exists and is not empty; choose a new directory")
    return None


# --- keys ---------------------------------------------------------------------------------------


def _env_token_key() -> bytes | None:
    text = os.environ.get(keys.TOKEN_KEY_ENV)
    return keys.key_from_text(text, f"${keys.TOKEN_KEY_ENV}") if text else None


def _existing_token_key(live: Workspace) -> bytes | None:
    path = live.secrets / keys.TOKEN_KEY_FILENAME
    try:
        return keys.read_key_file(path, "token key") if path.exists() else None
    except keys.KeyFileError as exc:
        raise VaultError(str(exc)) from None


def _checked_token_key(
    snapshot: Snapshot, given: bytes | None, existing: bytes | None
) -> bytes | None:
    """The tokenisation key for the restored workspace, checked against the snapshot's key id."""
    if given is not None and existing is not None and given != existing:
        raise VaultError(
            "the workspace restored over already has a different tokenisation key; "
            "restore without --key-file to keep it, or into a new directory"
        )
    key = given if given is not None else existing
    if not snapshot.token_key_ids:
        return key
    expected = snapshot.token_key_ids[-1]
    if key is None:
        raise VaultError(
            f"snapshot {snapshot.snapshot_id} holds data tokenised with key id {expected}; the "
            "key is never backed up (PCI DSS 3.6): pass it with --key-file PATH (the source "
            f"workspace's secrets/{keys.TOKEN_KEY_FILENAME}, or your key store's copy)"
        )
    actual = keys.key_id(key, keys.TOKEN_KEY_ID_LABEL)
    if actual != expected:
        raise VaultError(
            f"the tokenisation key given has key id {actual}, but snapshot "
            f"{snapshot.snapshot_id}'s data was written with {expected}: with it the same "
            "cards would get new tokens and re-ingested files would be added again; pass "
            "the original key"
        )
    return key


def _install_secrets(
    ws: Workspace, root: Path, token_key: bytes | None, with_records: bool
) -> None:
    """The tokenisation key and, with the records zone, the records key of ``ws`` (0600)."""
    restored = Workspace(root)
    records = records_key(ws, create=False) if with_records else None
    if records is not None and not key_path(restored).exists():
        keys.install_key_file(key_path(restored), records.key)
    token_file = restored.secrets / keys.TOKEN_KEY_FILENAME
    if token_key is not None and not token_file.exists():
        keys.install_key_file(token_file, token_key)


# --- copying --------------------------------------------------------------------------------


def _copy_entries(
    ws: Workspace, snapshot: Snapshot, entries: list[Entry], staging: Path, progress: bool
) -> RestoreResult:
    result = RestoreResult(snapshot.snapshot_id, staging)
    with vault_lock(ws, exclusive=False), progress_bar(progress) as bar:
        task = bar.add_task("restoring", total=sum(e.size for e in entries))
        for entry in entries:
            _restore_entry(ws, snapshot, entry, staging)
            result.files += 1
            result.bytes_restored += entry.size
            bar.advance(task, entry.size)
    staging.mkdir(parents=True, exist_ok=True)
    return result


def _restore_new(
    ws: Workspace,
    snapshot: Snapshot,
    entries: list[Entry],
    target: Path,
    token_key: bytes | None,
    progress: bool,
) -> RestoreResult:
    staging = target.parent / f".{target.name}.restore-{secrets.token_hex(4)}"
    try:
        result = _copy_entries(ws, snapshot, entries, staging, progress)
        _install_secrets(ws, staging, token_key, any(e.zone == "records" for e in entries))
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.target = target
    return result


def _restore_over(
    ws: Workspace,
    snapshot: Snapshot,
    entries: list[Entry],
    live: Workspace,
    token_key: bytes | None,
    actor: str,
    progress: bool,
) -> RestoreResult:
    """Snapshot what is replaced, then swap each restored zone in; no writer runs meanwhile."""
    zones = sorted({e.zone for e in entries})
    staging = live.root.parent / f".{live.root.name}.restore-{secrets.token_hex(4)}"
    aside = live.root.parent / f".{live.root.name}.replaced-{secrets.token_hex(4)}"
    with workspace_lock(live, exclusive=True, timeout=600):
        before = create_snapshot(live, zones=zones, actor=actor, trigger="pre-restore")
        try:
            result = _copy_entries(ws, snapshot, entries, staging, progress)
            for zone in zones:
                _swap_zone(live, zone, staging, aside)
            _install_secrets(live, live.root, token_key, with_records=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(aside, ignore_errors=True)
    result.target = live.root
    result.replaced_snapshot_id = before.snapshot.snapshot_id
    return result


def _swap_zone(live: Workspace, zone: str, staging: Path, aside: Path) -> None:
    """Put the staged zone in place of the live one (the live one goes aside, then away)."""
    current = zone_root(live, zone)
    relative = current.relative_to(live.root)
    new = staging / relative
    if not new.exists():
        return
    if zone == "records":
        _overlay_records(new, current)
        return
    companions = (
        [Path(f"{current}{suffix}") for suffix in ("-wal", "-shm", ".wal")]
        if zone in DATABASE_ZONES
        else []
    )
    for old in [current, *companions]:
        if old.exists():
            moved = aside / old.relative_to(live.root)
            moved.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, moved)
    current.parent.mkdir(parents=True, exist_ok=True)
    os.replace(new, current)


def _overlay_records(new: Path, current: Path) -> None:
    """Lay the snapshot's records over the live ones; the trail and legal holds stay live."""
    for source in sorted(p for p in new.rglob("*") if p.is_file()):
        relative = source.relative_to(new)
        if relative.parts[0] in _LIVE_RECORDS:
            continue
        dest = current / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)


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
