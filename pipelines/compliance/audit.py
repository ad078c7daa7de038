"""Append-only, authenticated, hash-chained audit trail at ``records/audit/audit.jsonl``.

Every unit records what it did with ``record(ws, action, actor, subject,
details)``: ingestion runs (with reconciliation counts), pipeline executions,
model registrations, approvals and rejections, deployments and rollbacks,
case dispositions, report generation, backups, restores, refused prunes.

Each line is one JSON entry ``{seq, ts, actor, action, subject, details,
prev_hash, key_id, hash}``. ``hash`` is an HMAC-SHA256, with the records key
(``pipelines.compliance.signing``, kept apart under ``secrets/``), of the
canonical JSON of the entry without ``hash``; ``prev_hash`` is the previous
entry's hash. Someone who can write the records zone but not read the key can
neither edit, remove, reorder nor append an entry, nor re-hash the chain,
without ``verify`` naming the first bad seq. A small head file (also MAC'd)
names the last seq and hash, so cutting entries off the end is detected; each
backup snapshot records the head too (an anchor the vault keeps under its
retention lock), so replaying an old head file is detected as well.

Appends hold a file lock, so concurrent processes never interleave or fork the
chain. Nothing is appended to a trail whose last entry does not authenticate
(fail closed). Entries never carry card data: ``record`` refuses details with a
clear card number.

Legacy trails (written by an older fraudops: ``hash`` is a plain SHA-256 and
there is no ``key_id``) still verify as a chain but are reported as
unauthenticated, never as ok. They are sealed by an authenticated
``audit.seal`` entry whose MAC covers the legacy head: automatically when the
records key is created (the first append by this version on an old workspace),
otherwise only by an operator (``fraudops audit seal``), because a legacy tail
behind an existing key means an authenticated trail was re-written. ``verify``
then reports how many legacy entries precede the seal. An unauthenticated entry
after an authenticated one is a forgery.

Exactly one entry per committed operation, even across a crash: ``committing``
writes a MAC'd write-ahead intent (``state/audit/pending/<op>.json``) before
the operation's commit point and records the entry after it. If the process
dies in between, the next ``record`` by any process finds the intent, asks the
filesystem whether the operation committed (a marker path exists or is gone),
records the entry once (``details.recovered``) or drops it, and appends an
``audit.recover`` entry saying what it did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.compliance.carddata import assert_no_card_data
from pipelines.compliance.locks import file_lock
from pipelines.compliance.signing import (
    RECORDS_KEY_ENV,
    RecordsKey,
    RecordsKeyError,
    key_mismatch,
    key_path,
    records_key,
    require_records_key,
)
from pipelines.core.fileio import fsync_dir, write_bytes_atomically
from pipelines.core.identity import current_user
from pipelines.core.workspace import Workspace

GENESIS_HASH = "0" * 64
_LEGACY_KEYS = ("seq", "ts", "actor", "action", "subject", "details", "prev_hash", "hash")
_ENTRY_KEYS = (*_LEGACY_KEYS[:-1], "key_id", "hash")
ENTRY_PURPOSE = "audit-entry"
HEAD_PURPOSE = "audit-head"
INTENT_PURPOSE = "audit-intent"
SEAL_ACTION = "audit.seal"
OPEN_ACTION = "audit.open"
_REMOVED_TRAIL = (
    "the audit trail is missing but this workspace's records key {key} exists: the trail "
    "was removed (a new trail opens as its key is created); restore records/audit from a "
    "snapshot. Nothing is appended to a removed trail"
)
# A temp intent this old whose writer holds no lock was left by a killed process.
_STALE_TEMP_SECONDS = 60.0


class AuditError(RuntimeError):
    """The audit trail cannot be read or appended to; the message says why and what to do."""


@dataclass(frozen=True)
class Anchor:
    """A (seq, hash) the trail must still contain, recorded elsewhere (a backup snapshot)."""

    seq: int
    hash: str
    source: str


def audit_dir(ws: Workspace) -> Path:
    return ws.records / "audit"


def audit_log_path(ws: Workspace) -> Path:
    """The JSON-lines trail itself."""
    return audit_dir(ws) / "audit.jsonl"


def head_path(ws: Workspace) -> Path:
    return audit_dir(ws) / "audit.head.json"


def _lock_path(ws: Workspace) -> Path:
    # A dot name: the vault skips it, so backups never capture lock files.
    return audit_dir(ws) / ".audit.lock"


def pending_dir(ws: Workspace) -> Path:
    """Write-ahead intents of operations between their start and their audit entry."""
    return ws.state_dir / "audit" / "pending"


def default_actor() -> str:
    """Who is acting (``pipelines.core.identity``)."""
    return current_user()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) that the hashes and MACs cover."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _body(entry: Mapping[str, Any]) -> bytes:
    return canonical_json({key: value for key, value in entry.items() if key != "hash"})


def entry_hash(entry: Mapping[str, Any]) -> str:
    """Plain SHA-256 of the entry without ``hash``: how legacy (unauthenticated) entries chain."""
    return hashlib.sha256(_body(entry)).hexdigest()


def entry_mac(entry: Mapping[str, Any], key: RecordsKey) -> str:
    """HMAC-SHA256 with the records key of the entry without ``hash``."""
    return key.mac(ENTRY_PURPOSE, _body(entry))


def _now() -> datetime:
    return datetime.now(UTC)


# --- appending ------------------------------------------------------------------------------


def _checked_details(
    action: str, actor: str, subject: str, details: Mapping[str, Any] | None
) -> dict[str, Any]:
    if not action or not isinstance(action, str):
        raise ValueError("audit action must be a non-empty string such as 'ingest.run'")
    checked = dict(details or {})
    assert_no_card_data({"actor": actor, "subject": subject, "details": checked})
    try:
        canonical_json(checked)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details for {action!r} are not JSON-serialisable: {exc}") from exc
    return checked


def record(
    ws: Workspace,
    action: str,
    actor: str | None = None,
    subject: str = "",
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one authenticated entry to the audit trail and return it.

    ``action`` is a dotted verb such as ``ingest.run`` or ``backup.prune.refused``;
    ``subject`` names what was acted on (a file, model package ARN, snapshot id).
    Raises ``CardDataError`` if any field holds a clear card number or a
    CVV-like key, ``ValueError`` if ``details`` is not JSON-serialisable, and
    ``AuditError`` if the trail's tail does not authenticate. Intents left by
    killed processes are recovered first (see the module docstring).
    """
    actor = actor or default_actor()
    checked = _checked_details(action, actor, subject, details)
    with _appending(ws) as trail:
        return trail.append(action, actor, subject, checked)


class _Appender:
    """Appends entries to a trail whose lock is held and whose tail was checked."""

    def __init__(self, ws: Workspace, key: RecordsKey, last: dict[str, Any] | None) -> None:
        self.ws, self.key, self.last = ws, key, last
        self.sealed: dict[str, Any] | None = None

    def append(
        self, action: str, actor: str, subject: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        entry = {
            "seq": (self.last["seq"] + 1) if self.last else 1,
            "ts": _now().isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev_hash": self.last["hash"] if self.last else GENESIS_HASH,
            "key_id": self.key.key_id,
        }
        entry["hash"] = entry_mac(entry, self.key)
        _append_line(audit_log_path(self.ws), canonical_json(entry) + b"\n")
        _write_head(self.ws, entry, self.key)
        self.last = entry
        return entry


@contextlib.contextmanager
def _appending(
    ws: Workspace, recover: bool = True, allow_seal: bool = False, actor: str | None = None
) -> Iterator[_Appender]:
    """Hold the audit lock over a checked tail (sealing a legacy one); settle orphaned intents."""
    path = audit_log_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(ws), purpose="appending to the audit trail"):
        last = _last_entry_repairing_torn_tail(path)
        key, opening = _writable_key(ws, last, allow_seal)
        appender = _Appender(ws, key, last)
        if opening == OPEN_ACTION:
            appender.append(
                OPEN_ACTION,
                actor or default_actor(),
                "audit",
                {"note": "records key created: the trail is authenticated from here on"},
            )
        elif opening == SEAL_ACTION:
            assert last is not None
            appender.sealed = appender.append(
                SEAL_ACTION,
                actor or default_actor(),
                "audit",
                {
                    "legacy_entries": last["seq"],
                    "legacy_head": last["hash"],
                    "note": "the entries before this one were written before the trail was "
                    "authenticated; from here on the records key covers them",
                },
            )
        if recover:
            _recover_pending(ws, appender)
        yield appender


def _writable_key(
    ws: Workspace, last: dict[str, Any] | None, allow_seal: bool = False
) -> tuple[RecordsKey, str]:
    """(key to extend the trail with, the entry to open it with first: open, seal or "").

    Checks the tail authenticates first: nothing is appended to a trail that
    does not (fail closed). A new trail opens with ``audit.open`` as its key is
    created, so an empty trail beside an existing key file means a removed one.
    A legacy tail is sealed automatically only when the records key is being
    created now (the first run of this version on an old workspace); if the key
    already existed, an unauthenticated tail means the trail was re-written,
    unless an operator says otherwise (``seal``).
    """
    head = _read_head(ws)
    if last is None and head.get("seq"):
        raise AuditError(
            f"{audit_log_path(ws)} is empty but {head_path(ws).name} names seq "
            f"{head.get('seq')}: entries were removed; run 'fraudops audit verify'"
        )
    if last is None or "key_id" not in last:
        if last is not None and "mac" in head:
            raise AuditError(
                f"the audit trail ends with an unauthenticated entry (seq {last.get('seq')}) "
                "but its head is authenticated: the trail was re-written without the records "
                "key; run 'fraudops audit verify'. Nothing is appended to it."
            )
        new_key = not os.environ.get(RECORDS_KEY_ENV) and not key_path(ws).exists()
        if last is None and not new_key and not os.environ.get(RECORDS_KEY_ENV):
            raise AuditError(_REMOVED_TRAIL.format(key=key_path(ws)))
        if last is not None and not (new_key or allow_seal):
            raise AuditError(
                f"the audit trail ends with an unauthenticated (legacy) entry, seq "
                f"{last.get('seq')}, and the records key already exists. If this trail was "
                "written by an older fraudops, seal it with 'fraudops audit seal'; if it had "
                "been authenticated, it was re-written: run 'fraudops audit verify'"
            )
        try:
            key = records_key(ws, create=True)
        except RecordsKeyError as exc:
            raise AuditError(str(exc)) from exc
        assert key is not None  # create=True
        return key, OPEN_ACTION if last is None else SEAL_ACTION
    what = f"the audit trail's last entry (seq {last.get('seq')})"
    try:
        key = require_records_key(ws, str(last["key_id"]), what)
    except RecordsKeyError as exc:
        raise AuditError(
            f"{exc}. Nothing is appended to a trail that cannot be authenticated."
        ) from None
    if last.get("hash") != entry_mac(last, key):
        raise AuditError(
            f"{what} fails authentication: it was altered or forged; run 'fraudops audit "
            "verify'. Nothing is appended to a trail that cannot be authenticated."
        )
    return key, ""


def ensure_writable(ws: Workspace) -> None:
    """Raise ``AuditError`` now if the trail could not take an entry: check before acting."""
    with _appending(ws, recover=False):
        pass


def seal(ws: Workspace, actor: str | None = None) -> dict[str, Any] | None:
    """Seal a legacy (unauthenticated) trail: the ``audit.seal`` entry it returns covers it.

    An operator's attestation that the trail predates authentication; returns
    None when there is nothing to seal. Audited with the actor like any entry.
    """
    with _appending(ws, recover=False, allow_seal=True, actor=actor) as trail:
        return trail.sealed


def current_head(ws: Workspace) -> dict[str, Any]:
    """The trail's MAC'd head ``{seq, hash, key_id, mac}`` once the whole chain verifies.

    What a checkpoint stores elsewhere (the records bucket on AWS): a head
    taken from a trail that does not verify would anchor a forgery, so it is
    refused with the report's first problem.
    """
    report = verify(ws)
    if not report.ok:
        why = report.problem or "its entries are unauthenticated"
        raise AuditError(f"the audit trail does not verify ({why}); run 'fraudops audit "
                         "verify' and fix it before a checkpoint")
    head = _read_head(ws)
    if not head:
        raise AuditError("the audit trail is empty: nothing to checkpoint yet")
    return head


def _append_line(path: Path, line: bytes) -> None:
    """One write with O_APPEND then fsync: the entry is on disk before we return."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_head(ws: Workspace, entry: Mapping[str, Any], key: RecordsKey) -> None:
    head = {"seq": entry["seq"], "hash": entry["hash"], "key_id": key.key_id}
    head["mac"] = key.mac(HEAD_PURPOSE, canonical_json(head))
    write_bytes_atomically(head_path(ws), canonical_json(head))


def _read_head(ws: Workspace) -> dict[str, Any]:
    """The head file as written ({} when absent); ``AuditError`` when unreadable."""
    path = head_path(ws)
    if not path.exists():
        return {}
    try:
        head = json.loads(path.read_bytes())
        int(head["seq"]), str(head["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path} is unreadable ({exc}); run 'fraudops audit verify'") from exc
    return head


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


# --- write-ahead intents: one entry per committed operation, even across a crash -----------


def _relative(ws: Workspace, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ws.root).as_posix()
    except ValueError:
        raise ValueError(f"commit marker {path} is outside the workspace {ws.root}") from None


MARKS_TABLE = "fraudops_audit_marks"


def mark_committed(conn: sqlite3.Connection, commit: Commit) -> None:
    """Inside the caller's SQLite transaction: the row that commits with it (``when_marked_in``)."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {MARKS_TABLE} "
        "(op_id TEXT PRIMARY KEY, marked_at TEXT NOT NULL)"
    )
    conn.execute(
        f"INSERT INTO {MARKS_TABLE} VALUES (?, ?)",
        (commit.op_id, _now().isoformat(timespec="microseconds")),
    )


def _marked(database: Path, op_id: str) -> bool:
    if not database.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(f"SELECT 1 FROM {MARKS_TABLE} WHERE op_id = ?", (op_id,))
            return rows.fetchone() is not None
        finally:
            conn.close()
    except sqlite3.OperationalError:  # no marks table yet: nothing was ever marked
        return False


def _committed(ws: Workspace, intent: Mapping[str, Any]) -> bool:
    """The commit marker says so: a row marked in the database, every ``exists`` path there,
    or an ``absent`` one gone. Without a marker the outcome is unknown: False."""
    when = intent["when"]
    if when.get("marked_in"):
        return _marked(ws.root / when["marked_in"], intent["op_id"])
    if when.get("exists"):
        return all((ws.root / rel).exists() for rel in when["exists"])
    return any(not (ws.root / rel).exists() for rel in when.get("absent", ()))


@dataclass
class Commit:
    """What ``committing`` yields: the op id, and ``outcome`` details known only afterwards.

    ``outcome`` is merged into the entry when the block completes; an entry
    recovered after a crash carries only the details given up front.
    """

    op_id: str
    outcome: dict[str, Any]


@contextlib.contextmanager
def committing(
    ws: Workspace,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    *,
    actor: str | None = None,
    when_exists: Sequence[Path] = (),
    when_absent: Sequence[Path] = (),
    when_marked_in: Path | None = None,
) -> Iterator[Commit]:
    """Audit the commit made inside the ``with`` block exactly once, even if the process dies.

    Give the path(s) whose existence (``when_exists``) or disappearance
    (``when_absent``) is the operation's commit point, or the SQLite database in
    whose transaction the block calls ``mark_committed``. An intent holding the
    entry is written, fsynced and locked before the block runs; after the block
    the entry is recorded with ``details.op_id``. If the block raises, the entry
    is recorded only if the commit happened anyway. If the process is killed,
    the next ``record`` recovers it (module docstring). Without markers a killed
    operation's outcome is unknown: recovery records it as abandoned.
    """
    if sum(map(bool, (when_exists, when_absent, when_marked_in))) > 1:
        raise ValueError("give one of when_exists, when_absent, when_marked_in")
    actor = actor or default_actor()
    checked = _checked_details(action, actor, subject, details)
    with _appending(ws, recover=False, actor=actor) as trail:  # fail now, before the
        key = trail.key  # commit, if the trail cannot be extended
    op_id = f"op-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"
    intent = {
        "op_id": op_id,
        "action": action,
        "actor": actor,
        "subject": subject,
        "details": checked,
        "written_at": _now().isoformat(timespec="microseconds"),
        "when": {
            "exists": [_relative(ws, p) for p in when_exists],
            "absent": [_relative(ws, p) for p in when_absent],
            "marked_in": _relative(ws, when_marked_in) if when_marked_in else "",
        },
        "key_id": key.key_id,
    }
    intent["mac"] = key.mac(INTENT_PURPOSE, canonical_json(intent))
    path, fd = _write_intent(ws, op_id, canonical_json(intent))
    commit, completed = Commit(op_id, {}), False
    try:
        yield commit
        completed = True
    finally:
        try:
            if completed or _committed(ws, intent):
                outcome = commit.outcome if completed else {}
                record(ws, action, actor, subject, {**checked, **outcome, "op_id": op_id})
            # Not reached if recording failed: the intent stays for the next recovery.
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _write_intent(ws: Workspace, op_id: str, body: bytes) -> tuple[Path, int]:
    """Write, fsync and lock the intent; it appears under its name already locked.

    The returned descriptor holds the lock for as long as the operation runs; the
    kernel drops it if the process dies, which is how recovery knows the owner is gone.
    """
    directory = pending_dir(ws)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{op_id}.", suffix=".tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, body)
        os.fsync(fd)
        final = directory / f"{op_id}.json"
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return final, fd


def _lock_if_orphaned(path: Path) -> int | None:
    """A descriptor holding ``path``'s lock if no live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_intent(path: Path, key: RecordsKey) -> tuple[dict[str, Any] | None, str]:
    """(intent, "") when it authenticates, else (None, why it is rejected)."""
    try:
        intent = json.loads(path.read_bytes())
        mac = intent.pop("mac")
        if intent.get("key_id") != key.key_id or not key.check(
            INTENT_PURPOSE, canonical_json(intent), mac
        ):
            return None, "its MAC does not match the records key (not written by fraudops)"
        for field in ("op_id", "action", "actor", "subject", "details", "when"):
            intent[field]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    return intent, ""


def _recover_pending(ws: Workspace, trail: _Appender) -> None:
    """Settle intents whose process died; audit what was done (called under the audit lock)."""
    directory = pending_dir(ws)
    if not directory.is_dir():
        return
    claimed: list[tuple[Path, int, dict[str, Any] | None]] = []
    notes: dict[str, list[str]] = {"recovered": [], "abandoned": [], "cleared": [], "rejected": []}
    try:
        for path in sorted(directory.glob("op-*.json")):
            fd = _lock_if_orphaned(path)
            if fd is None:
                continue  # its process is still running
            intent, why = _read_intent(path, trail.key)
            claimed.append((path, fd, intent))
            if intent is None:
                notes["rejected"].append(f"{path.name}: {why}")
        intents = [intent for _, _, intent in claimed if intent]
        in_trail = _ops_in_trail(audit_log_path(ws), {i["op_id"] for i in intents})
        for intent in intents:
            name = f"{intent['action']} {intent['subject']} ({intent['op_id']})"
            if intent["op_id"] in in_trail:
                notes["cleared"].append(name)
            elif _committed(ws, intent):
                details = {
                    **intent["details"],
                    "op_id": intent["op_id"],
                    "recovered": True,
                    "intent_written_at": intent["written_at"],
                }
                trail.append(intent["action"], intent["actor"], intent["subject"], details)
                notes["recovered"].append(name)
            else:
                notes["abandoned"].append(name)
        leftovers = _remove_stale_temps(directory)
        if leftovers:
            notes["leftovers_removed"] = leftovers
        if any(notes.values()):
            trail.append("audit.recover", default_actor(), "audit/pending", notes)
        for path, _, _ in claimed:
            path.unlink(missing_ok=True)
    finally:
        for _, fd, _ in claimed:
            os.close(fd)


def _remove_stale_temps(directory: Path) -> list[str]:
    removed = []
    for temp in directory.glob(".op-*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - temp.stat().st_mtime < _STALE_TEMP_SECONDS:
                continue
            fd = _lock_if_orphaned(temp)
            if fd is None:
                continue
            try:
                temp.unlink()
                removed.append(temp.name)
            finally:
                os.close(fd)
    return removed


def _ops_in_trail(path: Path, op_ids: set[str]) -> set[str]:
    """Which of ``op_ids`` already have an entry (a substring test first: one pass, no parse)."""
    found: set[str] = set()
    if not op_ids or not path.exists():
        return found
    with open(path, "rb") as handle:
        for raw in handle:
            if b'"op_id":"' not in raw:
                continue
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                op_id = json.loads(raw).get("details", {}).get("op_id")
                if op_id in op_ids:
                    found.add(op_id)
    return found


# --- a consistent copy for backups ------------------------------------------------------------


def consistent_copy(
    ws: Workspace, dest_dir: Path | None
) -> tuple[Anchor | None, list[tuple[str, Path]]]:
    """The trail's head and, with ``dest_dir``, copies of the trail and head file, all at once.

    Taken under the audit lock, so a snapshot's trail, head file and anchor
    agree even while other processes keep appending. Copies are named by their
    path inside the records zone (``audit/audit.jsonl``).
    """
    copies: list[tuple[str, Path]] = []
    with file_lock(_lock_path(ws), purpose="copying the audit trail"):
        last = _last_entry_repairing_torn_tail(audit_log_path(ws))
        for source in (audit_log_path(ws), head_path(ws)) if dest_dir else ():
            if source.exists():
                copy = dest_dir / f"audit-{uuid.uuid4().hex[:8]}-{source.name}"
                shutil.copyfile(source, copy)
                copies.append((source.relative_to(ws.records).as_posix(), copy))
    anchor = Anchor(int(last["seq"]), str(last["hash"]), "") if last else None
    return anchor, copies


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
    """Outcome of ``verify``: ``first_bad_seq`` is None when the chain is intact.

    ``legacy_entries`` counts entries written before the trail was authenticated
    (a plain SHA-256 chain). A trail made only of those is ``unauthenticated``:
    intact as a chain, but anyone could have re-written it, so it is not ``ok``.
    """

    entries: int
    first_bad_seq: int | None = None
    problem: str = ""
    legacy_entries: int = 0
    anchors_checked: int = 0

    @property
    def unauthenticated(self) -> bool:
        return self.entries > 0 and self.legacy_entries == self.entries

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None and not self.unauthenticated


def verify(ws: Workspace, anchors: Iterable[Anchor] = ()) -> ChainReport:
    """Walk the chain and name the first entry that was edited, removed, reordered or forged.

    ``anchors`` are heads recorded elsewhere (``vault.audit_anchors``): the trail
    must still hold each one, which catches a truncation behind a replayed head file.
    """
    anchors = list(anchors)
    try:
        key = records_key(ws, create=False)
        head = _read_head(ws)
    except (RecordsKeyError, AuditError) as exc:
        return ChainReport(0, 1, str(exc))
    wanted = {a.seq for a in anchors} | ({int(head["seq"])} if head else set())
    prev_hash, expected_seq, count, legacy = GENESIS_HASH, 1, 0, 0
    hashes: dict[int, str] = {}
    for number, entry, _ in iter_entries(ws):
        problem = _entry_problem(ws, entry, number, expected_seq, prev_hash, key, count, legacy)
        if problem:
            return ChainReport(count, expected_seq, problem, legacy)
        assert entry is not None  # _entry_problem rejects None
        legacy += "key_id" not in entry
        prev_hash, expected_seq, count = entry["hash"], expected_seq + 1, count + 1
        if entry["seq"] in wanted:
            hashes[entry["seq"]] = entry["hash"]
    found = _head_problem(ws, head, key, count, legacy, hashes) or _anchor_problem(
        anchors, count, hashes
    )
    if found:
        return ChainReport(count, found[0], found[1], legacy, len(anchors))
    return ChainReport(count, None, "", legacy, len(anchors))


def _entry_problem(
    ws: Workspace,
    entry: dict[str, Any] | None,
    number: int,
    expected_seq: int,
    prev_hash: str,
    key: RecordsKey | None,
    count: int,
    legacy: int,
) -> str:
    """What is wrong with ``entry`` given the ``count`` entries (``legacy`` of them) before it."""
    if entry is None:
        return f"line {number} is not a valid JSON entry (seq {expected_seq} expected)"
    authenticated = "key_id" in entry
    missing = [k for k in (_ENTRY_KEYS if authenticated else _LEGACY_KEYS) if k not in entry]
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
    if authenticated:
        mismatch = key_mismatch(ws, key, str(entry["key_id"]), f"seq {seq}")
        if mismatch:
            return mismatch
        assert key is not None
        if entry["hash"] != entry_mac(entry, key):
            return (
                f"seq {seq} was altered or forged: its MAC does not match "
                "(only a holder of the records key can write an entry)"
            )
        if legacy and count == legacy and (
            entry["action"] != SEAL_ACTION or entry["details"].get("legacy_entries") != legacy
        ):
            return (
                f"seq {seq} is the first authenticated entry after {legacy} legacy ones but "
                f"is not the {SEAL_ACTION} entry covering them"
            )
    elif count > legacy:
        return (
            f"seq {seq} is not authenticated but follows authenticated entries: it was "
            "inserted or re-written without the records key"
        )
    elif entry["hash"] != entry_hash(entry):
        return f"seq {seq} was altered: its content no longer matches its hash"
    if entry["prev_hash"] != prev_hash:
        return (
            f"seq {seq} does not follow seq {seq - 1}: prev_hash differs "
            "(the previous entry was altered, removed or replaced)"
        )
    return ""


def _head_problem(
    ws: Workspace,
    head: dict[str, Any],
    key: RecordsKey | None,
    count: int,
    legacy: int,
    hashes: dict[int, str],
) -> tuple[int, str] | None:
    """Entries cut off the end leave a shorter but valid chain; the MAC'd head catches that."""
    name = head_path(ws).name
    if not head:
        if not count and key_path(ws).exists() and not os.environ.get(RECORDS_KEY_ENV):
            return 1, _REMOVED_TRAIL.format(key=key_path(ws))
        return (count, f"{name} is missing (trail tampered?)") if count else None
    head_seq, head_hash = int(head["seq"]), str(head["hash"])
    if "mac" in head:
        body = {k: v for k, v in head.items() if k != "mac"}
        mismatch = key_mismatch(ws, key, str(head.get("key_id")), name)
        if mismatch:
            return max(count, 1), mismatch
        assert key is not None
        if not key.check(HEAD_PURPOSE, canonical_json(body), head["mac"]):
            return max(count, 1), f"{name} was altered: its MAC does not match"
        if count and count == legacy:
            return 1, (
                f"{name} is authenticated but no entry is: the trail was re-written "
                "without the records key"
            )
    elif count > legacy:
        return count, f"{name} is not authenticated although the trail is: it was re-written"
    if head_seq > count:
        return count + 1, (
            f"entries after seq {count} were removed: the trail had reached seq {head_seq}"
        )
    # A crash between appending a line and updating the head leaves the head
    # exactly one entry behind; any further behind means entries were appended
    # by something that does not write the head.
    if head_seq < count - 1:
        return head_seq + 1, (
            f"{name} names seq {head_seq} but the trail runs to seq {count}: entries after "
            f"seq {head_seq} were appended outside fraudops"
        )
    if hashes.get(head_seq) != head_hash:
        return head_seq, f"seq {head_seq} differs from the recorded head hash"
    return None


def _anchor_problem(
    anchors: list[Anchor], count: int, hashes: dict[int, str]
) -> tuple[int, str] | None:
    for anchor in sorted(anchors, key=lambda a: a.seq):
        if anchor.seq > count:
            return count + 1, (
                f"{anchor.source} recorded the trail at seq {anchor.seq}, but it now ends at "
                f"seq {count}: entries were removed"
            )
        if hashes.get(anchor.seq) != anchor.hash:
            return anchor.seq, (
                f"seq {anchor.seq} differs from the entry {anchor.source} recorded: the trail "
                "was re-written"
            )
    return None
