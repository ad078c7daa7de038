"""Retention rules per zone and legal holds: the policy the vault and the minimisation job obey.

Rules are days to retain, per zone. Records (reports, audit trail, case
dispositions, model approvals and the models they approved) are kept five
years, the Bank Secrecy Act record-keeping period; working data (the lake
zones and the catalog) 35 days. Rules are configurable, but a record zone can
never be set below its legal floor, and a change never shortens a snapshot
already taken (its retain-until is fixed at creation, like S3 Object Lock in
compliance mode).

A legal hold freezes data regardless of retention: a hold names a zone (or
``*``), a path prefix inside it (``dt=2024-01-05``, or empty for the whole
zone) and optionally one snapshot. Holds live in the records zone, so they are
themselves backed up and retained.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.compliance.locks import file_lock
from pipelines.core.fileio import write_text_atomically
from pipelines.core.workspace import Workspace

BSA_RETENTION_DAYS = 1827  # five years and a day, as infra/backup.yaml
WORKING_RETENTION_DAYS = 35

LAKE_ZONES: tuple[str, ...] = ("curated", "features", "scored", "labels", "quarantine")
# The ingest ledger (ids already ingested) travels with the lake: without it, a
# restored workspace would ingest the same files again.
FILE_ZONES: tuple[str, ...] = LAKE_ZONES + ("records", "artifacts", "ingest_ledger")
DATABASE_ZONES: tuple[str, ...] = ("registry_db", "cases_db", "catalog_db")
ALL_ZONES: tuple[str, ...] = FILE_ZONES + DATABASE_ZONES

# Derived, recomputable working data that the minimisation job removes by default.
DEFAULT_MINIMISE_ZONES: tuple[str, ...] = ("scored", "features")

RECORD_ZONES: frozenset[str] = frozenset({"records", "cases_db", "registry_db", "artifacts"})

DEFAULT_RETENTION_DAYS: dict[str, int] = {
    zone: BSA_RETENTION_DAYS if zone in RECORD_ZONES else WORKING_RETENTION_DAYS
    for zone in ALL_ZONES
}
# The legal floor a rule may not go under.
MINIMUM_RETENTION_DAYS: dict[str, int] = {
    zone: BSA_RETENTION_DAYS if zone in RECORD_ZONES else 1 for zone in ALL_ZONES
}


class PolicyError(ValueError):
    """A retention rule or legal hold request that cannot be honoured."""


def zone_root(ws: Workspace, zone: str) -> Path:
    """The directory (file zones) or database file (database zones) of ``zone``."""
    paths = {
        "curated": ws.curated,
        "features": ws.features,
        "scored": ws.scored,
        "labels": ws.labels,
        "quarantine": ws.quarantine,
        "records": ws.records,
        "artifacts": ws.artifacts,
        # Where LakeLayout.for_workspace puts the Ledger (tests/test_vault.py checks it).
        "ingest_ledger": ws.state_dir / "ingest" / "ledger",
        "registry_db": ws.registry_db,
        "cases_db": ws.cases_db,
        "catalog_db": ws.catalog_db,
    }
    if zone not in paths:
        raise PolicyError(f"unknown zone {zone!r}; zones are: {', '.join(ALL_ZONES)}")
    return paths[zone]


def _now() -> datetime:
    return datetime.now(UTC)


def _write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- retention rules -----------------------------------------------------------


def _rules_path(ws: Workspace) -> Path:
    return ws.vault / "retention.json"


def retention_rules(ws: Workspace) -> dict[str, int]:
    """Days to retain per zone: the defaults overlaid with the workspace's settings.

    A stored rule below its zone's legal floor (the file edited by hand) is read
    as the floor: the settings file can lengthen retention, never shorten it below the law.
    """
    rules = dict(DEFAULT_RETENTION_DAYS)
    path = _rules_path(ws)
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            rules.update(
                {
                    zone: max(int(days), MINIMUM_RETENTION_DAYS[zone])
                    for zone, days in stored.items()
                    if zone in rules
                }
            )
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise PolicyError(
                f"{path}: not valid retention rules ({exc}); fix or delete it"
            ) from exc
    return rules


def set_retention(ws: Workspace, changes: Mapping[str, int]) -> dict[str, int]:
    """Change retention days for some zones; refuses unknown zones and sub-legal periods."""
    rules = retention_rules(ws)
    for zone, days in changes.items():
        if zone not in rules:
            raise PolicyError(f"unknown zone {zone!r}; zones are: {', '.join(ALL_ZONES)}")
        floor = MINIMUM_RETENTION_DAYS[zone]
        if int(days) < floor:
            raise PolicyError(
                f"zone {zone!r} must be retained at least {floor} days "
                f"({'BSA record-keeping' if zone in RECORD_ZONES else 'minimum'}); got {days}"
            )
        rules[zone] = int(days)
    _write_json_atomic(_rules_path(ws), rules)
    return rules


# --- legal holds -----------------------------------------------------------------


@dataclass(frozen=True)
class LegalHold:
    """Data that must not be deleted, whatever its retention says, until released."""

    hold_id: str
    zone: str
    prefix: str
    reason: str
    placed_by: str
    placed_at: str
    snapshot: str = ""

    def covers(self, zone: str, relative_path: str, snapshot: str = "") -> bool:
        """True when this hold protects ``relative_path`` of ``zone`` (in ``snapshot``)."""
        if self.snapshot and self.snapshot != snapshot:
            return False
        return self.zone in ("*", zone) and relative_path.startswith(self.prefix)


def _holds_path(ws: Workspace) -> Path:
    return ws.records / "legal_holds" / "holds.json"


def legal_holds(ws: Workspace) -> list[LegalHold]:
    """Every active hold."""
    path = _holds_path(ws)
    if not path.exists():
        return []
    try:
        return [LegalHold(**item) for item in json.loads(path.read_text(encoding="utf-8"))]
    except (json.JSONDecodeError, TypeError) as exc:
        raise PolicyError(
            f"{path}: unreadable legal holds ({exc}); restore it from the vault"
        ) from exc


def place_legal_hold(
    ws: Workspace, zone: str, prefix: str, reason: str, placed_by: str, snapshot: str = ""
) -> LegalHold:
    """Add a hold; ``reason`` is required because a hold must be justified and reviewed."""
    if zone != "*":
        zone_root(ws, zone)  # validates the name
    if not reason.strip():
        raise PolicyError("a legal hold needs a reason (case number, request reference)")
    hold = LegalHold(
        hold_id=f"hold-{secrets.token_hex(4)}",
        zone=zone,
        prefix=prefix,
        reason=reason,
        placed_by=placed_by,
        placed_at=_now().isoformat(timespec="seconds"),
        snapshot=snapshot,
    )
    with file_lock(_holds_path(ws).with_name(".holds.lock")):
        holds = legal_holds(ws) + [hold]
        _write_json_atomic(_holds_path(ws), [asdict(h) for h in holds])
    return hold


def release_legal_hold(ws: Workspace, hold_id: str) -> LegalHold:
    """Remove a hold by id; raises ``PolicyError`` naming the id when there is none."""
    with file_lock(_holds_path(ws).with_name(".holds.lock")):
        holds = legal_holds(ws)
        kept = [h for h in holds if h.hold_id != hold_id]
        if len(kept) == len(holds):
            raise PolicyError(f"no legal hold {hold_id!r}; see 'fraudops backup hold list'")
        _write_json_atomic(_holds_path(ws), [asdict(h) for h in kept])
    return next(h for h in holds if h.hold_id == hold_id)


def held_by(
    holds: list[LegalHold], zone: str, relative_path: str, snapshot: str = ""
) -> LegalHold | None:
    """The first hold covering the path, if any."""
    return next((h for h in holds if h.covers(zone, relative_path, snapshot)), None)
