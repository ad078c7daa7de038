"""The case queue: one case per alert, worked open -> in_review -> closed.

SQLite keeps alerts, cases and every event on a case (assignment, notes,
disposition) with who and when, so a compliance officer can reconstruct any
decision. A closing disposition is also written to the labels zone, where the
next training run and the online terminal-risk state pick it up.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core import stores

DISPOSITIONS: dict[str, int | None] = {
    "confirmed_fraud": 1,
    "false_positive": 0,
    "escalate_sar": 1,  # escalated for a suspicious-activity report: treated as fraud
}
STATUSES = ("open", "in_review", "closed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id        INTEGER PRIMARY KEY,
    transaction_id  TEXT NOT NULL UNIQUE,
    card_id         TEXT NOT NULL,
    terminal_id     TEXT,
    amount          REAL,
    tx_timestamp    TEXT NOT NULL,
    score           REAL NOT NULL,
    severity        TEXT NOT NULL,
    model_version   TEXT,
    reasons         TEXT NOT NULL,      -- JSON list of human-readable reasons
    raised_at       TEXT NOT NULL,
    grouped_into    INTEGER REFERENCES alerts(alert_id)  -- set when deduplicated
);
CREATE INDEX IF NOT EXISTS alerts_by_card ON alerts(card_id, tx_timestamp);
CREATE TABLE IF NOT EXISTS cases (
    case_id      INTEGER PRIMARY KEY,
    alert_id     INTEGER NOT NULL UNIQUE REFERENCES alerts(alert_id),
    status       TEXT NOT NULL CHECK (status IN ('open', 'in_review', 'closed')),
    assignee     TEXT,
    disposition  TEXT,
    opened_at    TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    closed_at    TEXT
);
CREATE TABLE IF NOT EXISTS case_events (
    event_id   INTEGER PRIMARY KEY,
    case_id    INTEGER NOT NULL REFERENCES cases(case_id),
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    detail     TEXT
);
"""


class CaseError(ValueError):
    """An operation the case's state does not allow; the message says why."""


@dataclass(frozen=True)
class Case:
    case_id: int
    alert_id: int
    status: str
    assignee: str | None
    disposition: str | None
    opened_at: str
    updated_at: str
    closed_at: str | None
    alert: dict[str, Any]
    events: list[dict[str, Any]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# The rules of a case's life, shared by the SQLite queue and the lake's case table on AWS.
def assignment(case_id: int, status: str, disposition: str | None,
               assignee: str) -> dict[str, str | None]:
    """The fields an assignment sets; ``CaseError`` if the case is closed."""
    if status == "closed":
        raise CaseError(f"case {case_id} is closed ({disposition}); it cannot be assigned")
    return {"status": "in_review", "assignee": assignee}


def closing(case_id: int, status: str, current: str | None,
            disposition: str) -> dict[str, str | None]:
    """The fields closing with ``disposition`` sets; ``CaseError`` if unknown or closed."""
    if disposition not in DISPOSITIONS:
        raise CaseError(
            f"unknown disposition {disposition!r}: use one of {', '.join(DISPOSITIONS)}"
        )
    if status == "closed":
        raise CaseError(f"case {case_id} is already closed as {current}")
    return {"status": "closed", "disposition": disposition, "closed_at": _now()}


class CaseQueue:
    """Alerts and cases in one SQLite file (``Workspace.cases_db``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection for the queue's life: raising alerts from a stream calls
        # in here twice per alert, and opening SQLite each time dominated that.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with stores.opening(self.path, "case queue"), self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The queue's connection, inside one transaction (committed on success)."""
        with self._lock, self._db:
            yield self._db

    # ---------------------------------------------------------------- alerts
    def last_alert_for_card(self, card_id: str) -> dict[str, Any] | None:
        """The card's most recent primary (not grouped) alert, if any."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM alerts WHERE card_id = ? AND grouped_into IS NULL "
                "ORDER BY tx_timestamp DESC LIMIT 1",
                (card_id,),
            ).fetchone()
        return dict(row) if row else None

    def add_alert(self, alert: dict[str, Any], grouped_into: int | None = None) -> int | None:
        """Store an alert (and open its case unless grouped); ``None`` if already stored.

        Re-raising the same transaction is a no-op, so reruns never duplicate alerts.
        """
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO alerts (transaction_id, card_id, terminal_id, amount, "
                "tx_timestamp, score, severity, model_version, reasons, raised_at, grouped_into) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    alert["transaction_id"], alert["card_id"], alert.get("terminal_id"),
                    alert.get("amount"), alert["tx_timestamp"], alert["score"],
                    alert["severity"], alert.get("model_version"),
                    json.dumps(alert.get("reasons", [])), _now(), grouped_into,
                ),
            )
            if cursor.rowcount == 0:
                return None
            alert_id = int(cursor.lastrowid or 0)
            if grouped_into is None:
                now = _now()
                case = db.execute(
                    "INSERT INTO cases (alert_id, status, opened_at, updated_at) "
                    "VALUES (?, 'open', ?, ?)",
                    (alert_id, now, now),
                )
                db.execute(
                    "INSERT INTO case_events (case_id, at, actor, action, detail) "
                    "VALUES (?, ?, 'system', 'opened', ?)",
                    (case.lastrowid, now, f"{alert['severity']} alert, score {alert['score']:.3f}"),
                )
        return alert_id

    def list_alerts(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Primary alerts with their case status, most severe and newest first."""
        query = (
            "SELECT a.*, c.case_id, c.status, c.assignee, c.disposition, "
            "(SELECT COUNT(*) FROM alerts g WHERE g.grouped_into = a.alert_id) AS grouped "
            "FROM alerts a JOIN cases c ON c.alert_id = a.alert_id"
        )
        params: list[Any] = []
        if status:
            query += " WHERE c.status = ?"
            params.append(status)
        query += (" ORDER BY CASE a.severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, "
                  "a.tx_timestamp DESC LIMIT ?")
        params.append(limit)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return [_decoded(row) for row in rows]

    # ----------------------------------------------------------------- cases
    def show(self, case_id: int) -> Case:
        with self._connect() as db:
            case = db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
            if case is None:
                raise CaseError(f"no case {case_id}; `fraudops alerts list` shows the open ones")
            alert = db.execute("SELECT * FROM alerts WHERE alert_id = ?",
                               (case["alert_id"],)).fetchone()
            events = db.execute("SELECT at, actor, action, detail FROM case_events "
                                "WHERE case_id = ? ORDER BY event_id", (case_id,)).fetchall()
        return Case(**dict(case), alert=_decoded(alert), events=[dict(e) for e in events])

    def assign(self, case_id: int, assignee: str, actor: str) -> Case:
        case = self.show(case_id)
        self._update(case_id, actor, "assigned", assignee,
                     **assignment(case_id, case.status, case.disposition, assignee))
        return self.show(case_id)

    def add_note(self, case_id: int, note: str, actor: str) -> Case:
        self.show(case_id)
        self._update(case_id, actor, "note", note)
        return self.show(case_id)

    def close(self, case_id: int, disposition: str, actor: str, note: str = "") -> Case:
        if disposition not in DISPOSITIONS:  # before the lookup: the clearer error first
            closing(case_id, "", None, disposition)
        case = self.show(case_id)
        self._update(case_id, actor, "closed", f"{disposition}: {note}".rstrip(": "),
                     **closing(case_id, case.status, case.disposition, disposition))
        return self.show(case_id)

    def closed_since(self, since: str = "") -> list[Case]:
        with self._connect() as db:
            ids = [r[0] for r in db.execute(
                "SELECT case_id FROM cases WHERE status = 'closed' AND closed_at >= ? "
                "ORDER BY case_id", (since,))]
        return [self.show(i) for i in ids]

    def _update(self, case_id: int, actor: str, action: str, detail: str,
                **fields: str | None) -> None:
        now = _now()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            if fields:
                db.execute(f"UPDATE cases SET {assignments}, updated_at = ? WHERE case_id = ?",
                           (*fields.values(), now, case_id))
            else:
                db.execute("UPDATE cases SET updated_at = ? WHERE case_id = ?", (now, case_id))
            db.execute("INSERT INTO case_events (case_id, at, actor, action, detail) "
                       "VALUES (?, ?, ?, ?, ?)", (case_id, now, actor, action, detail))


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["reasons"] = json.loads(record.get("reasons") or "[]")
    return record


def case_label(case_id: int, transaction_id: str, disposition: str,
               closed_at: Any) -> dict[str, Any]:
    """A closed case as a training label: the transaction, its label, when it became known."""
    return {
        "transaction_id": transaction_id,
        "is_fraud": DISPOSITIONS[disposition],
        "label_known_at": closed_at,
        "label_source": f"case:{case_id}:{disposition}",
    }


def labels_from_cases(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Closed cases as training labels (``case_label`` of each)."""
    return [
        case_label(case.case_id, case.alert["transaction_id"], case.disposition, case.closed_at)
        for case in cases
        if case.disposition in DISPOSITIONS
    ]
