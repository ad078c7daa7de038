"""Append-only, hash-chained audit trail at ``records/audit/audit.jsonl``.

Every unit records what it did with ``record(ws, action, actor, subject,
details)``: ingestion runs (with reconciliation counts), pipeline executions,
model registrations, approvals and rejections, deployments and rollbacks,
case dispositions, report generation, backups, restores, refused prunes.

Each line is one JSON entry ``{seq, ts, actor, action, subject, details,
prev_hash, hash}`` where ``hash`` is the SHA-256 of the canonical JSON of the
entry without ``hash`` and ``prev_hash`` is the previous entry's hash, so
editing, removing or reordering any entry breaks the chain and ``verify``
names the first bad seq. A small head file remembers the last seq and hash so
that cutting entries off the end is detected too. Appends hold a file lock,
so concurrent processes never interleave or fork the chain. Entries never
carry card data: ``record`` refuses details with a clear card number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.compliance.carddata import assert_no_card_data
from pipelines.compliance.locks import file_lock
from pipelines.core.identity import current_user
from pipelines.core.workspace import Workspace

GENESIS_HASH = "0" * 64
_ENTRY_KEYS = ("seq", "ts", "actor", "action", "subject", "details", "prev_hash", "hash")


class AuditError(RuntimeError):
    """The audit trail cannot be read or appended to."""


def audit_dir(ws: Workspace) -> Path:
    return ws.records / "audit"


def audit_log_path(ws: Workspace) -> Path:
    """The JSON-lines trail itself."""
    return audit_dir(ws) / "audit.jsonl"


def _head_path(ws: Workspace) -> Path:
    return audit_dir(ws) / "audit.head.json"


def _lock_path(ws: Workspace) -> Path:
    # A dot name: the vault skips it, so backups never capture lock files.
    return audit_dir(ws) / ".audit.lock"


def default_actor() -> str:
    """Who is acting (``pipelines.core.identity``)."""
    return current_user()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) that the hashes cover."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def record(
    ws: Workspace,
    action: str,
    actor: str | None = None,
    subject: str = "",
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one entry to the audit trail and return it.

    ``action`` is a dotted verb such as ``ingest.run`` or ``backup.prune.refused``;
    ``subject`` names what was acted on (a file, model package ARN, snapshot id).
    Raises ``CardDataError`` if any field holds a clear card number or a
    CVV-like key, ``ValueError`` if ``details`` is not JSON-serialisable.
    """
    if not action or not isinstance(action, str):
        raise ValueError("audit action must be a non-empty string such as 'ingest.run'")
    actor = actor or default_actor()
    details = dict(details or {})
    assert_no_card_data({"actor": actor, "subject": subject, "details": details})
    try:
        canonical_json(details)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details for {action!r} are not JSON-serialisable: {exc}") from exc

    path = audit_log_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(ws), purpose="appending to the audit trail"):
        last = _last_entry_repairing_torn_tail(path)
        entry = {
            "seq": (last["seq"] + 1) if last else 1,
            "ts": _now().isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev_hash": last["hash"] if last else GENESIS_HASH,
        }
        entry["hash"] = entry_hash(entry)
        _append_line(path, canonical_json(entry) + b"\n")
        _write_head(ws, entry)
    return entry


def _append_line(path: Path, line: bytes) -> None:
    """One write with O_APPEND then fsync: the entry is on disk before we return."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_head(ws: Workspace, entry: Mapping[str, Any]) -> None:
    head = _head_path(ws)
    tmp = head.with_name(f".{head.name}.{os.getpid()}.tmp")
    tmp.write_bytes(canonical_json({"seq": entry["seq"], "hash": entry["hash"]}))
    os.replace(tmp, head)


def _last_entry_repairing_torn_tail(path: Path) -> dict[str, Any] | None:
    """The last complete entry; a torn final line (crash mid-write) is cut off first.

    A torn line was never acknowledged to its writer, so removing it loses
    nothing that was recorded; the cut is itself audited by the caller's entry
    following a well-formed chain.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        chunk = 1 << 16
        start = max(0, size - chunk)
        handle.seek(start)
        tail = handle.read()
        while start > 0 and tail.count(b"\n") < 2:
            start = max(0, start - chunk)
            handle.seek(start)
            tail = handle.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start + cut + 1 if cut >= 0 else 0
            handle.truncate(keep)
            tail = tail[: cut + 1] if cut >= 0 else b""
    lines = tail.rstrip(b"\n").split(b"\n")
    if not lines or not lines[-1]:
        return None
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise AuditError(
            f"{path}: the last entry is not valid JSON ({exc}); run 'fraudops audit verify'"
        ) from exc


def iter_entries(ws: Workspace) -> Iterator[tuple[int, dict[str, Any] | None, bytes]]:
    """Yield (line number, parsed entry or None if unparseable, raw line)."""
    path = audit_log_path(ws)
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n")
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            yield number, entry if isinstance(entry, dict) else None, line


_RELATIVE = re.compile(r"^(\d+)([hdw])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2026-01-31``, an ISO timestamp, or a relative ``12h`` / ``7d`` / ``2w``."""
    now = now or _now()
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(hours=amount * {"h": 1, "d": 24, "w": 168}[unit])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a date (2026-01-31), an ISO timestamp or 12h/7d/2w"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _action_matches(action: str, wanted: str) -> bool:
    """Exact action, or any action under a dotted prefix (``backup`` ~ ``backup.create``)."""
    return action == wanted or action.startswith(wanted.rstrip(".") + ".")


def list_entries(
    ws: Workspace,
    action: str | None = None,
    since: datetime | None = None,
    actor: str | None = None,
    subject: str | None = None,
) -> list[dict[str, Any]]:
    """Entries matching every given filter, oldest first (unparseable lines skipped)."""
    selected = []
    for _, entry, _ in iter_entries(ws):
        if entry is None:
            continue
        if action and not _action_matches(str(entry.get("action", "")), action):
            continue
        if actor and entry.get("actor") != actor:
            continue
        if subject and subject not in str(entry.get("subject", "")):
            continue
        if since and datetime.fromisoformat(entry["ts"]) < since:
            continue
        selected.append(entry)
    return selected


@dataclass(frozen=True)
class ChainReport:
    """Outcome of ``verify``: ``first_bad_seq`` is None when the chain is intact."""

    entries: int
    first_bad_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def verify(ws: Workspace) -> ChainReport:
    """Walk the chain and name the first entry that was edited, removed or reordered."""
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    hashes: dict[int, str] = {}
    for number, entry, _ in iter_entries(ws):
        problem = _entry_problem(entry, number, expected_seq, prev_hash)
        if problem:
            return ChainReport(count, expected_seq, problem)
        assert entry is not None  # _entry_problem rejects None
        prev_hash, expected_seq, count = entry["hash"], expected_seq + 1, count + 1
        hashes[entry["seq"]] = entry["hash"]
    return _check_head(ws, count, hashes)


def _entry_problem(
    entry: dict[str, Any] | None, number: int, expected_seq: int, prev_hash: str
) -> str:
    if entry is None:
        return f"line {number} is not a valid JSON entry (seq {expected_seq} expected)"
    missing = [key for key in _ENTRY_KEYS if key not in entry]
    if missing:
        return f"line {number} (seq {entry.get('seq')}) lacks fields {missing}"
    seq = entry["seq"]
    if seq != expected_seq:
        if isinstance(seq, int) and seq > expected_seq:
            return (
                f"seq {expected_seq} is missing: line {number} holds seq {seq} "
                "(entries removed or reordered)"
            )
        return f"line {number} holds seq {seq} where seq {expected_seq} belongs (reordered)"
    if entry["hash"] != entry_hash(entry):
        return f"seq {seq} was altered: its content no longer matches its hash"
    if entry["prev_hash"] != prev_hash:
        return (
            f"seq {seq} does not follow seq {seq - 1}: prev_hash differs "
            "(the previous entry was altered, removed or replaced)"
        )
    return ""


def _check_head(ws: Workspace, count: int, hashes: dict[int, str]) -> ChainReport:
    """Entries cut off the end leave a shorter but valid chain; the head file catches that."""
    head_path = _head_path(ws)
    if not head_path.exists():
        if count:
            return ChainReport(count, count, f"{head_path.name} is missing (trail tampered?)")
        return ChainReport(0)
    try:
        head = json.loads(head_path.read_bytes())
        head_seq, head_hash = int(head["seq"]), str(head["hash"])
    except (ValueError, KeyError, TypeError):
        return ChainReport(count, count or 1, f"{head_path.name} is unreadable")
    if head_seq > count:
        return ChainReport(
            count,
            count + 1,
            f"entries after seq {count} were removed: the trail had reached seq {head_seq}",
        )
    # A crash between appending a line and updating the head leaves the head
    # one entry behind; that is fine as long as the entry it names is intact.
    if hashes.get(head_seq) != head_hash:
        return ChainReport(count, head_seq, f"seq {head_seq} differs from the recorded head hash")
    return ChainReport(count)
