"""Data minimisation: remove working data past its retention, in the lake and in the vault.

``minimise(ws)`` deletes day partitions (``dt=YYYY-MM-DD``) of the working
lake zones (scored and features by default) whose day is older than the
zone's retention (or ``older_than_days``), skipping any partition under a
legal hold, then prunes the vault, where retain-until locks and legal holds
keep protected copies. Record zones are never minimised: the records zone is
not partitioned working data and its retention is the BSA floor. Every run
is audited with what was removed and what was kept and why.

Card-data rules live in ``pipelines.compliance.carddata`` and are re-exported
here: ``assert_no_card_data(record)`` for any unit that writes records.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pipelines.compliance import audit, vault
from pipelines.compliance.carddata import (
    CardDataError,
    assert_no_card_data,
    card_data_problems,
)
from pipelines.compliance.locks import workspace_lock
from pipelines.compliance.policy import (
    DEFAULT_MINIMISE_ZONES,
    LAKE_ZONES,
    RECORD_ZONES,
    PolicyError,
    held_by,
    legal_holds,
    retention_rules,
    zone_root,
)
from pipelines.core.workspace import Workspace

__all__ = [
    "DEFAULT_MINIMISE_ZONES",
    "CardDataError",
    "MinimisationResult",
    "assert_no_card_data",
    "card_data_problems",
    "expired_partitions",
    "minimise",
]

_PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@dataclass
class MinimisationResult:
    """What the job removed and what it kept because of a legal hold."""

    removed: list[str] = field(default_factory=list)  # zone/dt=... removed from the lake
    held: list[str] = field(default_factory=list)  # zone/dt=... (hold id) kept
    vault: vault.PruneResult | None = None


def _partition_day(path: Path) -> date | None:
    match = _PARTITION.match(path.name)
    if not match or not path.is_dir():
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None  # dt=2024-02-30: not ours to judge, leave it


def expired_partitions(root: Path, cutoff: date) -> list[Path]:
    """Day partitions directly under ``root`` whose day is strictly before ``cutoff``."""
    if not root.exists():
        return []
    return sorted(
        p for p in root.iterdir() if (day := _partition_day(p)) is not None and day < cutoff
    )


def _check_zones(zones: Sequence[str]) -> None:
    for zone in zones:
        if zone in RECORD_ZONES or zone not in LAKE_ZONES:
            raise PolicyError(
                f"zone {zone!r} cannot be minimised: only the partitioned working zones "
                f"({', '.join(LAKE_ZONES)}) can; records are kept for their full retention"
            )


def minimise(
    ws: Workspace,
    zones: Sequence[str] = DEFAULT_MINIMISE_ZONES,
    older_than_days: int | None = None,
    actor: str | None = None,
    now: datetime | None = None,
    prune_vault: bool = True,
) -> MinimisationResult:
    """Delete expired day partitions of ``zones`` (honouring legal holds), then prune the vault.

    ``older_than_days`` overrides the zone retention rule for this run but may
    not be shorter than it, so a run never removes data the policy still keeps.
    """
    _check_zones(zones)
    audit.ensure_writable(ws)  # nothing is removed that could not be audited
    moment = now or datetime.now(UTC)
    rules = retention_rules(ws)
    holds = legal_holds(ws)
    result = MinimisationResult()
    # Exclusive: no writer is mid-way through a partition we are about to remove.
    with workspace_lock(ws, exclusive=True, timeout=600):
        for zone in zones:
            days = rules[zone] if older_than_days is None else older_than_days
            if days < rules[zone]:
                raise PolicyError(
                    f"zone {zone!r} is retained {rules[zone]} days; --older-than-days {days} "
                    "would remove data the retention policy still keeps"
                )
            cutoff = (moment - timedelta(days=days)).date()
            root = zone_root(ws, zone)
            for partition in expired_partitions(root, cutoff):
                name = f"{zone}/{partition.name}"
                hold = held_by(holds, zone, partition.name)
                if hold:
                    result.held.append(f"{name} ({hold.hold_id})")
                    continue
                _remove_partition(partition)
                result.removed.append(name)
    if prune_vault:
        result.vault = vault.prune(ws, actor=actor, now=moment)
    audit.record(
        ws,
        "retention.minimise",
        actor,
        ",".join(zones),
        {
            "removed": result.removed,
            "kept_under_legal_hold": result.held,
            "vault_entries_expired": result.vault.entries_expired if result.vault else 0,
        },
    )
    return result


def _remove_partition(partition: Path) -> None:
    """Rename out of the zone first, so readers never see a half-deleted partition."""
    doomed = partition.with_name(f".deleting-{partition.name}")
    partition.rename(doomed)
    shutil.rmtree(doomed)
