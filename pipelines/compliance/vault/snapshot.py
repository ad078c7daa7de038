"""Take a snapshot: store new file contents once, by hash, then write the manifest last.

Incremental: a stat cache marks files unchanged since the last backup, whose
objects are then neither re-read nor copied.

Consistency: ``create_snapshot`` holds the workspace lock exclusively (writers
hold it shared while they stage and ``os.replace`` a partition), skips staging
and temp names, copies SQLite databases with the online backup API and DuckDB
after a CHECKPOINT while holding its connection.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pipelines.compliance import audit
from pipelines.compliance.locks import workspace_lock
from pipelines.compliance.policy import (
    ALL_ZONES,
    DATABASE_ZONES,
    FILE_ZONES,
    retention_rules,
    zone_root,
)
from pipelines.compliance.vault.layout import (
    VaultError,
    clean_tmp,
    copy_hashing,
    is_transient_name,
    iso,
    object_path,
    progress_bar,
    tmp_dir,
    utc_now,
    vault_lock,
)
from pipelines.compliance.vault.manifest import (
    Entry,
    Snapshot,
    manifest_path,
    new_snapshot_id,
    write_manifest,
)
from pipelines.core.fileio import sha256_file, write_json_atomically
from pipelines.core.workspace import Workspace


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


def _file_sources(
    ws: Workspace, zones: Sequence[str], replaced: Sequence[tuple[str, str, Path]]
) -> Iterator[_Source]:
    """Every file of the zones; ``replaced`` (zone, relative, copy) stand in for live files."""
    skip = {(zone, relative) for zone, relative, _ in replaced}
    for zone in zones:
        if zone not in FILE_ZONES:
            continue
        root = zone_root(ws, zone)
        for path in _walk_zone(root):
            relative = path.relative_to(root).as_posix()
            if (zone, relative) in skip:
                continue
            st = path.stat()
            yield _Source(
                zone, relative, path, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            )
    for zone, relative, copy in replaced:
        yield _Source(zone, relative, copy, None)


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
        copy = tmp_dir(ws) / f"{zone}-{secrets.token_hex(4)}.db"
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
    tmp = tmp_dir(ws) / f"{secrets.token_hex(8)}.part"
    copied = copy_hashing(source, tmp)
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
    os.chmod(tmp, 0o400)  # immutable and owner-only; accidental writes fail loudly
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
    moment = now or utc_now()
    rules = retention_rules(ws)
    with workspace_lock(ws, exclusive=True, timeout=lock_timeout), vault_lock(ws):
        clean_tmp(ws)
        tmp_dir(ws).mkdir(parents=True, exist_ok=True)
        result = _capture(ws, zones, moment, rules, actor, trigger, progress)
        snapshot = result.snapshot
        details = {
            "trigger": trigger,
            "zones": list(zones),
            "files": result.files,
            "bytes_total": result.bytes_total,
            "objects_written": result.objects_written,
            "bytes_written": result.bytes_written,
            "retain_until": snapshot.retain_until,
            "audit_head_seq": snapshot.audit_head["seq"] if snapshot.audit_head else 0,
        }
        # The manifest's appearance is the commit point: audited exactly once, even if killed.
        with audit.committing(
            ws,
            "backup.create",
            snapshot.snapshot_id,
            details,
            actor=actor,
            when_exists=[manifest_path(ws, snapshot.snapshot_id)],
        ):
            write_manifest(ws, snapshot)
        clean_tmp(ws)
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
    # The anchor and the trail's copy are taken together, under the audit lock.
    anchor, audit_copies = audit.consistent_copy(
        ws, tmp_dir(ws) if "records" in zones else None
    )
    replaced = [("records", relative, copy) for relative, copy in audit_copies]
    sources = list(_file_sources(ws, zones, replaced)) + list(_database_sources(ws, zones))
    cache, new_cache = _load_cache(ws), {}
    entries: list[Entry] = []
    result = BackupResult(snapshot=None)  # type: ignore[arg-type]
    with progress_bar(progress) as bar:
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
                    retain_until=iso(moment + timedelta(days=rules[source.zone])),
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
        created_at=iso(moment),
        created_by=actor,
        trigger=trigger,
        zone_roots={
            zone: zone_root(ws, zone).relative_to(ws.root).as_posix()
            if zone in FILE_ZONES
            else zone_root(ws, zone).parent.relative_to(ws.root).as_posix()
            for zone in zones
        },
        entries=tuple(entries),
        audit_head={"seq": anchor.seq, "hash": anchor.hash} if anchor else None,
        token_key_ids=token_key_ids(ws),
    )
    return result


def token_key_ids(ws: Workspace) -> tuple[str, ...]:
    """Ids of the tokenisation keys the lake was written with, oldest first (from the trail).

    The key itself is never backed up (PCI DSS 3.6); restoring asks for it and
    checks it against the newest id here.
    """
    ids: dict[str, None] = {}
    for entry in audit.list_entries(ws, action="ingest.run"):
        key_id = entry["details"].get("token_key_id")
        if key_id:
            ids[key_id] = None
    return tuple(ids)
