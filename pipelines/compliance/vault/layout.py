"""Where the vault keeps things, its errors, and the hashing and copying every job shares.

Layout under ``workspace.vault``::

    objects/ab/cdef...      file contents, named by SHA-256 (stored once, read-only)
    snapshots/<id>.json     one manifest per snapshot, written atomically last
    tmp/                    files being written; anything left here is garbage
    cache.json              stat cache: unchanged files are not re-read
    schedule.json           how often ``run_if_due`` takes a snapshot
    .vault.lock             exclusive for writers (backup, prune, delete), shared for readers
"""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from pipelines.compliance.locks import file_lock
from pipelines.core.fileio import CHUNK
from pipelines.core.workspace import Workspace


class VaultError(RuntimeError):
    """The vault cannot do what was asked; the message says why and what to do."""


class SnapshotLocked(VaultError):
    """Deleting a snapshot before its retain-until date (or under legal hold)."""


def objects_dir(ws: Workspace) -> Path:
    return ws.vault / "objects"


def snapshots_dir(ws: Workspace) -> Path:
    return ws.vault / "snapshots"


def tmp_dir(ws: Workspace) -> Path:
    return ws.vault / "tmp"


def object_path(ws: Workspace, sha256: str) -> Path:
    """Where the object with this SHA-256 lives: ``objects/ab/cdef...``."""
    return objects_dir(ws) / sha256[:2] / sha256[2:]


def vault_lock(ws: Workspace, exclusive: bool = True) -> AbstractContextManager[None]:
    """The vault's own lock: exclusive to change it, shared to read it."""
    ws.vault.mkdir(parents=True, exist_ok=True)
    return file_lock(ws.vault / ".vault.lock", exclusive=exclusive, purpose="the backup vault")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def is_transient_name(name: str) -> bool:
    """Staging, temp and lock names that writers use before ``os.replace``: never backed up."""
    return (
        name.startswith(".")
        or name.startswith("_tmp")
        or name.endswith((".staging", ".tmp", ".partial"))
    )


def copy_hashing(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (fsynced) and return the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


def clean_tmp(ws: Workspace) -> int:
    """Remove leftovers of interrupted backups (call with the vault lock held)."""
    removed = 0
    directory = tmp_dir(ws)
    if directory.exists():
        for leftover in directory.iterdir():
            leftover.unlink()
            removed += 1
    for stale in snapshots_dir(ws).glob(".*.tmp") if snapshots_dir(ws).exists() else ():
        stale.unlink()
        removed += 1
    return removed

