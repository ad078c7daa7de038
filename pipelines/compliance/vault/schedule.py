"""The backup schedule: how often ``run_if_due`` (``fraudops run``, cron) takes a snapshot."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipelines.compliance import audit
from pipelines.compliance.vault.layout import VaultError, utc_now
from pipelines.compliance.vault.manifest import snapshot_ids
from pipelines.compliance.vault.snapshot import BackupResult, create_snapshot
from pipelines.core.fileio import write_json_atomically
from pipelines.core.workspace import Workspace

DEFAULT_EVERY_HOURS = 24


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
    audit.ensure_writable(ws)
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
    return last is None or (now or utc_now()) - last >= timedelta(hours=schedule.every_hours)


def run_if_due(
    ws: Workspace, now: datetime | None = None, actor: str = "scheduler", progress: bool = False
) -> BackupResult | None:
    """Take a scheduled snapshot if one is due (called by ``fraudops run`` and cron)."""
    if not due(ws, now):
        return None
    return create_snapshot(ws, actor=actor, now=now, trigger="scheduled", progress=progress)
