"""Local backup vault: content-addressed, incremental snapshots with retain-until locks.

Layout under ``workspace.vault``::

    objects/ab/cdef...      file contents, named by SHA-256 (stored once, read-only)
    snapshots/<id>.json     one manifest per snapshot, written atomically last
    tmp/                    files being written; anything left here is garbage
    cache.json              stat cache: unchanged files are not re-read
    schedule.json           how often ``run_if_due`` takes a snapshot

A snapshot exists only once its manifest is in place, so a backup killed
half-way leaves at most unreferenced objects and temp files, which the next
backup reuses or cleans. Each manifest entry carries the zone, the path inside
the zone, size, SHA-256 and ``retain_until`` (creation time + the zone's
retention rule); deleting a snapshot before every entry's date passes is
refused and audited. ``prune`` drops expired entries (keeping anything under
legal hold) and garbage-collects objects no manifest references.

Consistency: ``create_snapshot`` holds the workspace lock exclusively (writers
hold it shared while they stage and ``os.replace`` a partition), skips staging
and temp names, copies SQLite databases with the online backup API and DuckDB
after a CHECKPOINT while holding its connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from pipelines.compliance import audit
from pipelines.compliance.audit import canonical_json
from pipelines.compliance.locks import file_lock, workspace_lock
from pipelines.compliance.policy import (
    ALL_ZONES,
    DATABASE_ZONES,
    FILE_ZONES,
    LegalHold,
    held_by,
    legal_holds,
    retention_rules,
    zone_root,
)
from pipelines.core.fileio import write_json_atomically
from pipelines.core.workspace import Workspace

MANIFEST_FORMAT = 1
CHUNK = 1 << 20
DEFAULT_EVERY_HOURS = 24

_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


class VaultError(RuntimeError):
    """The vault cannot do what was asked; the message says why and what to do."""


class SnapshotLocked(VaultError):
    """Deleting a snapshot before its retain-until date (or under legal hold)."""


# --- paths and small helpers -----------------------------------------------------


def _objects(ws: Workspace) -> Path:
    return ws.vault / "objects"


def _snapshots(ws: Workspace) -> Path:
    return ws.vault / "snapshots"


def _tmp(ws: Workspace) -> Path:
    return ws.vault / "tmp"


def object_path(ws: Workspace, sha256: str) -> Path:
    """Where the object with this SHA-256 lives: ``objects/ab/cdef...``."""
    return _objects(ws) / sha256[:2] / sha256[2:]


def _vault_lock(ws: Workspace, exclusive: bool = True):
    ws.vault.mkdir(parents=True, exist_ok=True)
    return file_lock(ws.vault / ".vault.lock", exclusive=exclusive, purpose="the backup vault")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_transient_name(name: str) -> bool:
    """Staging, temp and lock names that writers use before ``os.replace``: never backed up."""
    return (
        name.startswith(".")
        or name.startswith("_tmp")
        or name.endswith((".staging", ".tmp", ".partial"))
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (fsynced) and return the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


# --- manifests -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file of a snapshot."""

    zone: str
    path: str  # POSIX path inside the zone root
    size: int
    sha256: str
    retain_until: str
    mtime_ns: int = 0


@dataclass(frozen=True)
class Snapshot:
    """A manifest: the complete description of one snapshot."""

    snapshot_id: str
    created_at: str
    created_by: str
    trigger: str
    zone_roots: dict[str, str]
    entries: tuple[Entry, ...]
    pruned: tuple[dict[str, Any], ...] = ()

    @property
    def retain_until(self) -> str:
        """The latest retain-until of its entries: the snapshot is locked until then."""
        return max((e.retain_until for e in self.entries), default=self.created_at)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        body = {
            "format": MANIFEST_FORMAT,
            "snapshot_id": self.snapshot_id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "trigger": self.trigger,
            "zone_roots": self.zone_roots,
            "retain_until": self.retain_until,
            "entries": [e.__dict__ for e in self.entries],
            "pruned": list(self.pruned),
        }
        body["manifest_sha256"] = hashlib.sha256(canonical_json(body)).hexdigest()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any], source: Path) -> Snapshot:
        claimed = body.get("manifest_sha256")
        rest = {k: v for k, v in body.items() if k != "manifest_sha256"}
        if claimed != hashlib.sha256(canonical_json(rest)).hexdigest():
            raise VaultError(f"manifest {source.name} was altered: its checksum does not match")
        return cls(
            snapshot_id=body["snapshot_id"],
            created_at=body["created_at"],
            created_by=body["created_by"],
            trigger=body["trigger"],
            zone_roots=dict(body["zone_roots"]),
            entries=tuple(Entry(**e) for e in body["entries"]),
            pruned=tuple(body.get("pruned", ())),
        )


def _manifest_path(ws: Workspace, snapshot_id: str) -> Path:
    return _snapshots(ws) / f"{snapshot_id}.json"


def _write_manifest(ws: Workspace, snapshot: Snapshot) -> None:
    """Temp file, fsync, rename, fsync the directory: the snapshot appears whole or not at all."""
    directory = _snapshots(ws)
    directory.mkdir(parents=True, exist_ok=True)
    final = _manifest_path(ws, snapshot.snapshot_id)
    tmp = directory / f".{final.name}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(json.dumps(snapshot.to_json(), indent=1).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)


def load_snapshot(ws: Workspace, snapshot_id: str) -> Snapshot:
    """Read and check one manifest; ``VaultError`` names the snapshot if absent or altered."""
    path = _manifest_path(ws, snapshot_id)
    if not _SNAPSHOT_ID.match(snapshot_id) or not path.exists():
        raise VaultError(f"no snapshot {snapshot_id!r}; see 'fraudops backup list'")
    try:
        return Snapshot.from_json(json.loads(path.read_bytes()), path)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VaultError(f"manifest {path.name} is unreadable ({exc})") from exc


def snapshot_ids(ws: Workspace) -> list[str]:
    """Ids of every snapshot with a manifest, oldest first."""
    directory = _snapshots(ws)
    if not directory.exists():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _SNAPSHOT_ID.match(p.stem))


def list_snapshots(ws: Workspace) -> list[Snapshot]:
    """Every readable snapshot, oldest first (``verify`` reports unreadable ones)."""
    snapshots = []
    for snapshot_id in snapshot_ids(ws):
        try:
            snapshots.append(load_snapshot(ws, snapshot_id))
        except VaultError:
            continue
    return snapshots


# --- create -----------------------------------------------------------------------


@dataclass
class BackupResult:
    """What a backup stored: ``bytes_written`` counts only new objects (the increment)."""

    snapshot: Snapshot
    files: int = 0
    bytes_total: int = 0
    objects_written: int = 0
    bytes_written: int = 0


@dataclass(frozen=True)
class _Source:
    zone: str
    relative: str
    path: Path
    stat_key: tuple[int, int, int, int] | None  # None: a temp copy, never cached


def _walk_zone(root: Path) -> Iterator[Path]:
    """Files under ``root`` in a stable order, skipping staging/temp names at any depth."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not is_transient_name(d))
        for name in sorted(files):
            if not is_transient_name(name):
                yield Path(directory) / name


def _file_sources(ws: Workspace, zones: Sequence[str]) -> Iterator[_Source]:
    for zone in zones:
        if zone not in FILE_ZONES:
            continue
        root = zone_root(ws, zone)
        for path in _walk_zone(root):
            st = path.stat()
            yield _Source(
                zone,
                path.relative_to(root).as_posix(),
                path,
                (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
            )


def _copy_sqlite(src: Path, dest: Path) -> None:
    """A transactionally consistent copy even while other connections write."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _copy_duckdb(src: Path, dest: Path) -> None:
    """CHECKPOINT folds the WAL into the file; copying while connected keeps writers out."""
    import duckdb

    try:
        connection = duckdb.connect(str(src))
    except duckdb.Error as exc:
        raise VaultError(
            f"cannot open {src} for backup ({exc}); close the process using the catalog and retry"
        ) from exc
    try:
        connection.execute("CHECKPOINT")
        shutil.copyfile(src, dest)
    finally:
        connection.close()


def _database_sources(ws: Workspace, zones: Sequence[str]) -> Iterator[_Source]:
    for zone in zones:
        if zone not in DATABASE_ZONES:
            continue
        path = zone_root(ws, zone)
        if not path.exists():
            continue
        copy = _tmp(ws) / f"{zone}-{secrets.token_hex(4)}.db"
        if zone == "catalog_db":
            _copy_duckdb(path, copy)
        else:
            _copy_sqlite(path, copy)
        yield _Source(zone, path.name, copy, None)


def _store_object(
    ws: Workspace, source: Path, cached_sha256: str | None, size: int
) -> tuple[str, int]:
    """Store ``source`` unless an object with its hash exists; return (sha256, bytes written).

    ``cached_sha256`` comes from the stat cache (file unchanged since the last
    backup); an existing object of the right size is then trusted and nothing
    is read or copied: the increment.
    """
    sha256 = cached_sha256 or sha256_file(source)
    final = object_path(ws, sha256)
    if final.exists() and final.stat().st_size == size:
        return sha256, 0
    tmp = _tmp(ws) / f"{secrets.token_hex(8)}.part"
    copied = _copy_hashing(source, tmp)
    if copied != sha256:
        tmp.unlink()
        if cached_sha256:
            # The stat cache was stale: hash what is really there and store that.
            return _store_object(ws, source, None, size)
        raise VaultError(
            f"{source} changed while it was being backed up; a writer is not holding the "
            "workspace lock (pipelines.compliance.locks.workspace_lock)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o444)  # objects are immutable; accidental writes fail loudly
    os.replace(tmp, final)
    return sha256, size


def _load_cache(ws: Workspace) -> dict[str, list]:
    path = ws.vault / "cache.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_cache(ws: Workspace, cache: dict[str, list]) -> None:
    write_json_atomically(ws.vault / "cache.json", cache)


def clean_tmp(ws: Workspace) -> int:
    """Remove leftovers of interrupted backups (call with the vault lock held)."""
    removed = 0
    directory = _tmp(ws)
    if directory.exists():
        for leftover in directory.iterdir():
            leftover.unlink()
            removed += 1
    for stale in _snapshots(ws).glob(".*.tmp") if _snapshots(ws).exists() else ():
        stale.unlink()
        removed += 1
    return removed


def new_snapshot_id(moment: datetime) -> str:
    """Sortable by time, unique by a random suffix: ``20261125T113000Z-1a2b3c``."""
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def create_snapshot(
    ws: Workspace,
    zones: Sequence[str] = ALL_ZONES,
    actor: str | None = None,
    now: datetime | None = None,
    trigger: str = "manual",
    progress: bool = False,
    lock_timeout: float | None = 600.0,
) -> BackupResult:
    """Take an incremental snapshot of ``zones`` and return what was stored."""
    unknown = [z for z in zones if z not in ALL_ZONES]
    if unknown:
        raise VaultError(f"unknown zone(s) {unknown}; zones are: {', '.join(ALL_ZONES)}")
    actor = actor or audit.default_actor()
    moment = now or _now()
    rules = retention_rules(ws)
    with workspace_lock(ws, exclusive=True, timeout=lock_timeout), _vault_lock(ws):
        clean_tmp(ws)
        _tmp(ws).mkdir(parents=True, exist_ok=True)
        result = _capture(ws, zones, moment, rules, actor, trigger, progress)
        _write_manifest(ws, result.snapshot)
        clean_tmp(ws)
    audit.record(
        ws,
        "backup.create",
        actor,
        result.snapshot.snapshot_id,
        {
            "trigger": trigger,
            "zones": list(zones),
            "files": result.files,
            "bytes_total": result.bytes_total,
            "objects_written": result.objects_written,
            "bytes_written": result.bytes_written,
            "retain_until": result.snapshot.retain_until,
        },
    )
    return result


def _capture(
    ws: Workspace,
    zones: Sequence[str],
    moment: datetime,
    rules: dict[str, int],
    actor: str,
    trigger: str,
    progress: bool,
) -> BackupResult:
    sources = list(_file_sources(ws, zones)) + list(_database_sources(ws, zones))
    cache, new_cache = _load_cache(ws), {}
    entries: list[Entry] = []
    result = BackupResult(snapshot=None)  # type: ignore[arg-type]
    with _progress(progress) as bar:
        task = bar.add_task("backing up", total=sum(s.path.stat().st_size for s in sources))
        for source in sources:
            st = source.path.stat()
            cached = cache.get(str(source.path)) if source.stat_key else None
            known = cached[4] if cached and tuple(cached[:4]) == source.stat_key else None
            sha256, written = _store_object(ws, source.path, known, st.st_size)
            if source.stat_key:
                new_cache[str(source.path)] = [*source.stat_key, sha256]
            entries.append(
                Entry(
                    zone=source.zone,
                    path=source.relative,
                    size=st.st_size,
                    sha256=sha256,
                    retain_until=_iso(moment + timedelta(days=rules[source.zone])),
                    mtime_ns=st.st_mtime_ns if source.stat_key else 0,
                )
            )
            result.files += 1
            result.bytes_total += st.st_size
            result.objects_written += 1 if written else 0
            result.bytes_written += written
            bar.advance(task, st.st_size)
    _save_cache(ws, new_cache)
    result.snapshot = Snapshot(
        snapshot_id=new_snapshot_id(moment),
        created_at=_iso(moment),
        created_by=actor,
        trigger=trigger,
        zone_roots={
            zone: zone_root(ws, zone).relative_to(ws.root).as_posix()
            if zone in FILE_ZONES
            else zone_root(ws, zone).parent.relative_to(ws.root).as_posix()
            for zone in zones
        },
        entries=tuple(entries),
    )
    return result


# --- verify -----------------------------------------------------------------------


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
    with _vault_lock(ws, exclusive=False):
        snapshots: list[Snapshot] = []
        for snapshot_id in snapshot_list or snapshot_ids(ws):
            try:
                snapshots.append(load_snapshot(ws, snapshot_id))
            except VaultError as exc:
                report.problems.append(str(exc))
        report.snapshots = len(snapshots)
        unique = {e.sha256: e.size for s in snapshots for e in s.entries}
        status: dict[str, str] = {}
        with _progress(progress) as bar:
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


# --- restore ------------------------------------------------------------------------


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
        with _vault_lock(ws, exclusive=False), _progress(progress) as bar:
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
    if _copy_hashing(source, dest) != entry.sha256:
        raise VaultError(
            f"snapshot {snapshot.snapshot_id}: {entry.zone}/{entry.path}: object "
            f"{entry.sha256[:2]}/{entry.sha256[2:]} is altered; restore stopped"
        )
    if entry.mtime_ns:
        os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))


# --- delete, prune, garbage collection -------------------------------------------


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
    moment = now or _now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    with _vault_lock(ws):
        snapshots = [load_snapshot(ws, snapshot_id) for snapshot_id in ids]
        holds = legal_holds(ws)
        for snapshot in snapshots:
            _refuse_if_protected(ws, snapshot, holds, moment, actor)
        for snapshot in snapshots:
            _manifest_path(ws, snapshot.snapshot_id).unlink()
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
    moment = now or _now()
    actor = actor or audit.default_actor()
    result = PruneResult()
    with _vault_lock(ws):
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
        _manifest_path(ws, snapshot.snapshot_id).unlink()
        result.snapshots_removed.append(snapshot.snapshot_id)
        return
    zones_expired = sorted({e.zone for e in expired})
    note = {"pruned_at": _iso(moment), "zones": zones_expired, "entries": len(expired)}
    _write_manifest(
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
    objects = _objects(ws)
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


# --- schedule ------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Take a snapshot when the last one is ``every_hours`` old (0 = disabled)."""

    every_hours: int = DEFAULT_EVERY_HOURS

    @property
    def enabled(self) -> bool:
        return self.every_hours > 0

    def describe(self) -> str:
        names = {24: "daily", 1: "hourly", 168: "weekly"}
        if not self.enabled:
            return "off"
        return names.get(self.every_hours, f"every {self.every_hours}h")


_SCHEDULE_SPEC = re.compile(r"^(\d+)([hd])$")


def parse_schedule(spec: str) -> Schedule:
    """``daily`` | ``hourly`` | ``weekly`` | ``off`` | ``<N>h`` | ``<N>d``."""
    text = spec.strip().lower()
    named = {"daily": 24, "hourly": 1, "weekly": 168, "off": 0}
    if text in named:
        return Schedule(named[text])
    match = _SCHEDULE_SPEC.match(text)
    if not match or int(match.group(1)) == 0:
        raise VaultError(f"schedule {spec!r}: use daily, hourly, weekly, off, 12h or 2d")
    return Schedule(int(match.group(1)) * (24 if match.group(2) == "d" else 1))


def get_schedule(ws: Workspace) -> Schedule:
    path = ws.vault / "schedule.json"
    if not path.exists():
        return Schedule()
    try:
        return Schedule(int(json.loads(path.read_text(encoding="utf-8"))["every_hours"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise VaultError(
            f"{path} is unreadable ({exc}); set it again with 'backup schedule'"
        ) from exc


def set_schedule(ws: Workspace, schedule: Schedule, actor: str | None = None) -> Schedule:
    write_json_atomically(ws.vault / "schedule.json", {"every_hours": schedule.every_hours})
    audit.record(ws, "backup.schedule.set", actor, "vault", {"schedule": schedule.describe()})
    return schedule


def last_snapshot_time(ws: Workspace) -> datetime | None:
    ids = snapshot_ids(ws)
    return datetime.strptime(ids[-1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if ids else None


def due(ws: Workspace, now: datetime | None = None) -> bool:
    """True when the schedule is on and the newest snapshot is at least one interval old."""
    schedule = get_schedule(ws)
    if not schedule.enabled:
        return False
    last = last_snapshot_time(ws)
    return last is None or (now or _now()) - last >= timedelta(hours=schedule.every_hours)


def run_if_due(
    ws: Workspace, now: datetime | None = None, actor: str = "scheduler", progress: bool = False
) -> BackupResult | None:
    """Take a scheduled snapshot if one is due (called by ``fraudops run`` and cron)."""
    if not due(ws, now):
        return None
    return create_snapshot(ws, actor=actor, now=now, trigger="scheduled", progress=progress)
