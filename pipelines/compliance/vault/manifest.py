"""The snapshot format: one authenticated JSON manifest per snapshot, written whole or not at all.

A snapshot exists only once its manifest is in place, so a backup killed
half-way leaves at most unreferenced objects and temp files, which the next
backup reuses or cleans. Each manifest entry carries the zone, the path inside
the zone, size, SHA-256 and ``retain_until`` (creation time + the zone's
retention rule).

The manifest is MAC'd with the records key (``pipelines.compliance.signing``),
which the vault does not hold: editing any field (a ``retain_until`` above
all) and recomputing a checksum does not make it verify, and pruning trusts
only manifests that do. Each manifest also records the audit trail's head at
snapshot time (``audit_head``): an anchor the vault keeps under the snapshot's
retention lock, which ``audit verify`` and ``backup verify`` compare with the
live trail.

Format 1 manifests (older versions: a plain SHA-256 ``manifest_sha256``) are
read as *legacy*: their objects are verified and restorable, but their dates
are not trusted until an operator re-signs them (``adopt_legacy``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.compliance.audit import Anchor, canonical_json
from pipelines.compliance.signing import RecordsKey, RecordsKeyError, key_mismatch, records_key
from pipelines.compliance.vault.layout import VaultError, snapshots_dir
from pipelines.core.fileio import write_bytes_atomically
from pipelines.core.workspace import Workspace

MANIFEST_FORMAT = 2
MANIFEST_PURPOSE = "snapshot-manifest"

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
    """A manifest: the complete description of one snapshot.

    ``authenticated`` is False for a legacy (format 1) manifest, whose dates are
    not trusted. ``audit_head`` is ``{"seq", "hash"}`` of the trail when taken.
    """

    snapshot_id: str
    created_at: str
    created_by: str
    trigger: str
    zone_roots: dict[str, str]
    entries: tuple[Entry, ...]
    pruned: tuple[dict[str, Any], ...] = ()
    audit_head: dict[str, Any] | None = None
    token_key_ids: tuple[str, ...] = ()
    authenticated: bool = True

    @property
    def retain_until(self) -> str:
        """The latest retain-until of its entries: the snapshot is locked until then."""
        return max((e.retain_until for e in self.entries), default=self.created_at)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        """The manifest body the MAC covers (``write_manifest`` adds ``key_id`` and the MAC)."""
        return {
            "format": MANIFEST_FORMAT,
            "snapshot_id": self.snapshot_id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "trigger": self.trigger,
            "zone_roots": self.zone_roots,
            "retain_until": self.retain_until,
            "entries": [e.__dict__ for e in self.entries],
            "pruned": list(self.pruned),
            "audit_head": self.audit_head,
            "token_key_ids": list(self.token_key_ids),
        }

    @classmethod
    def from_json(
        cls, ws: Workspace, body: dict[str, Any], source: Path, key: RecordsKey | None
    ) -> Snapshot:
        """Parse and authenticate a manifest; ``VaultError`` names it if it does not verify."""
        rest = {k: v for k, v in body.items() if k not in ("manifest_mac", "manifest_sha256")}
        if "manifest_mac" in body:
            problem = key_mismatch(ws, key, str(body.get("key_id")), f"manifest {source.name}")
            if problem:
                raise VaultError(problem)
            assert key is not None
            if not key.check(MANIFEST_PURPOSE, canonical_json(rest), body["manifest_mac"]):
                raise VaultError(
                    f"manifest {source.name} was altered: its MAC does not match (it was "
                    "edited without the records key); its dates are not trusted"
                )
            authenticated = True
        elif body.get("format") == 1 and "manifest_sha256" in body:
            if body["manifest_sha256"] != hashlib.sha256(canonical_json(rest)).hexdigest():
                raise VaultError(f"manifest {source.name} was altered: its checksum does not match")
            authenticated = False
        else:
            raise VaultError(
                f"manifest {source.name} carries no MAC: it was not written by fraudops"
            )
        return cls(
            snapshot_id=body["snapshot_id"],
            created_at=body["created_at"],
            created_by=body["created_by"],
            trigger=body["trigger"],
            zone_roots=dict(body["zone_roots"]),
            entries=tuple(Entry(**e) for e in body["entries"]),
            pruned=tuple(body.get("pruned", ())),
            audit_head=body.get("audit_head"),
            token_key_ids=tuple(body.get("token_key_ids", ())),
            authenticated=authenticated,
        )


def manifest_path(ws: Workspace, snapshot_id: str) -> Path:
    return snapshots_dir(ws) / f"{snapshot_id}.json"


def _key(ws: Workspace) -> RecordsKey | None:
    try:
        return records_key(ws, create=False)
    except RecordsKeyError as exc:
        raise VaultError(str(exc)) from None


def write_manifest(ws: Workspace, snapshot: Snapshot) -> None:
    """Sign and write durably and atomically: the snapshot appears whole or not at all.

    The records key is created by the audit trail (``audit.committing`` runs
    before every manifest write), never here: the vault only uses it.
    """
    key = _key(ws)
    if key is None:
        raise VaultError(
            "this workspace has no records key to sign the manifest with; record an audit "
            "entry first (every fraudops command does) or restore secrets/records.key"
        )
    body = snapshot.to_json() | {"key_id": key.key_id}
    body["manifest_mac"] = key.mac(MANIFEST_PURPOSE, canonical_json(body))
    text = json.dumps(body, indent=1).encode()
    write_bytes_atomically(manifest_path(ws, snapshot.snapshot_id), text, durable=True)


def read_manifest_json(ws: Workspace, snapshot_id: str) -> dict[str, Any]:
    """The manifest as JSON, authenticated or not (``VaultError`` if absent or unparseable)."""
    path = manifest_path(ws, snapshot_id)
    if not _SNAPSHOT_ID.match(snapshot_id) or not path.exists():
        raise VaultError(f"no snapshot {snapshot_id!r}; see 'fraudops backup list'")
    try:
        body = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise VaultError(f"manifest {path.name} is unreadable ({exc})") from exc
    if not isinstance(body, dict):
        raise VaultError(f"manifest {path.name} is unreadable (not a JSON object)")
    return body


def load_snapshot(ws: Workspace, snapshot_id: str, key: RecordsKey | None = None) -> Snapshot:
    """Read and authenticate one manifest; ``VaultError`` names it if absent or altered."""
    body = read_manifest_json(ws, snapshot_id)
    path = manifest_path(ws, snapshot_id)
    try:
        return Snapshot.from_json(ws, body, path, key or _key(ws))
    except (KeyError, TypeError) as exc:
        raise VaultError(f"manifest {path.name} is unreadable ({exc})") from exc


def snapshot_ids(ws: Workspace) -> list[str]:
    """Ids of every snapshot with a manifest, oldest first."""
    directory = snapshots_dir(ws)
    if not directory.exists():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _SNAPSHOT_ID.match(p.stem))


def list_snapshots(ws: Workspace) -> list[Snapshot]:
    """Every readable snapshot, oldest first (``verify`` reports unreadable ones)."""
    key = _key(ws)
    snapshots = []
    for snapshot_id in snapshot_ids(ws):
        try:
            snapshots.append(load_snapshot(ws, snapshot_id, key))
        except VaultError:
            continue
    return snapshots


def audit_anchors(snapshots: Iterable[Snapshot]) -> list[Anchor]:
    """The audit heads recorded by authenticated snapshots (legacy ones prove nothing)."""
    return [
        Anchor(int(s.audit_head["seq"]), str(s.audit_head["hash"]), f"snapshot {s.snapshot_id}")
        for s in snapshots
        if s.authenticated and s.audit_head
    ]


def new_snapshot_id(moment: datetime) -> str:
    """Sortable by time, unique by a random suffix: ``20261125T113000Z-1a2b3c``."""
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
