"""The snapshot format: one checksummed JSON manifest per snapshot, written whole or not at all.

A snapshot exists only once its manifest is in place, so a backup killed
half-way leaves at most unreferenced objects and temp files, which the next
backup reuses or cleans. Each manifest entry carries the zone, the path inside
the zone, size, SHA-256 and ``retain_until`` (creation time + the zone's
retention rule).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.compliance.audit import canonical_json
from pipelines.compliance.vault.layout import VaultError, snapshots_dir
from pipelines.core.fileio import write_bytes_atomically
from pipelines.core.workspace import Workspace

MANIFEST_FORMAT = 1

_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


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


def manifest_path(ws: Workspace, snapshot_id: str) -> Path:
    return snapshots_dir(ws) / f"{snapshot_id}.json"


def write_manifest(ws: Workspace, snapshot: Snapshot) -> None:
    """Durable and atomic: the snapshot appears whole or not at all, and survives a power cut."""
    body = json.dumps(snapshot.to_json(), indent=1).encode()
    write_bytes_atomically(manifest_path(ws, snapshot.snapshot_id), body, durable=True)


def load_snapshot(ws: Workspace, snapshot_id: str) -> Snapshot:
    """Read and check one manifest; ``VaultError`` names the snapshot if absent or altered."""
    path = manifest_path(ws, snapshot_id)
    if not _SNAPSHOT_ID.match(snapshot_id) or not path.exists():
        raise VaultError(f"no snapshot {snapshot_id!r}; see 'fraudops backup list'")
    try:
        return Snapshot.from_json(json.loads(path.read_bytes()), path)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VaultError(f"manifest {path.name} is unreadable ({exc})") from exc


def snapshot_ids(ws: Workspace) -> list[str]:
    """Ids of every snapshot with a manifest, oldest first."""
    directory = snapshots_dir(ws)
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


def new_snapshot_id(moment: datetime) -> str:
    """Sortable by time, unique by a random suffix: ``20261125T113000Z-1a2b3c``."""
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"

