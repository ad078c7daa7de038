"""SageMaker Model Registry semantics in one SQLite file.

Model packages are versioned 1, 2, 3 ... inside a model package group, take
the ``CreateModelPackage`` request the RegisterModel step carries, and answer
with the shapes of ``DescribeModelPackage`` / ``ListModelPackages``. Approval
is a separate, audited decision: every decision is kept with the approver's
account, the display name typed beside it, the time and the reason.

Four-eyes: a decision is refused when the approver is the account that
started the pipeline execution (``created_by``) or the account of the process
that registered the package (``registered_by``), compared by
:func:`pipelines.core.identity.identity_key`. Every refused attempt is
audited (``model.approve.refused`` ...). The one exception is
:meth:`LocalModelRegistry.demo_approve`, used by ``fraudops run`` to show the
whole flow on one laptop: it is recorded as a demo approval (decision kind
``demo``, ``ApprovalKind`` in the description, ``model.approve.demo`` in the
audit trail) and shown as such wherever approvals are shown.

Each decision emits a ``SageMaker Model Package State Change`` event on the
bus, which is how the deploy handler learns that a model was approved.
Local extensions of the DescribeModelPackage shape: ``RegisteredBy`` and
``ApprovalKind``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.compliance.audit import Commit, mark_committed
from pipelines.compliance.carddata import mask_card_numbers
from pipelines.core import stores
from pipelines.core.events import (
    LOCAL_ACCOUNT,
    LOCAL_REGION,
    MODEL_PACKAGE_STATE_CHANGE,
    SAGEMAKER_SOURCE,
    Delivery,
    EventBus,
    local_bus,
)
from pipelines.core.identity import clean_display_name, current_user, identity_key, same_identity
from pipelines.core.workspace import Workspace

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
APPROVAL_STATUSES = (PENDING, APPROVED, REJECTED)
# Kinds of decision: reviewed by an account other than the trainer's, or the demo self-approval.
FOUR_EYES = "four-eyes"
DEMO = "demo"
# How a demo approval is flagged wherever approvals are shown (model show, model card).
DEMO_NOTICE = "DEMO approval by the trainer's own account: not reviewed by a second person"

# Allowed decisions: approve or reject a pending package, retire an approved one.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    PENDING: (APPROVED, REJECTED),
    APPROVED: (REJECTED,),
    REJECTED: (),
}

ARN_PREFIX = f"arn:aws:sagemaker:{LOCAL_REGION}:{LOCAL_ACCOUNT}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_package_groups (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_packages (
    arn TEXT PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES model_package_groups(name),
    version INTEGER NOT NULL,
    approval_status TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_modified_by TEXT,
    last_modified_at TEXT,
    approval_description TEXT,
    request_json TEXT NOT NULL,
    registered_by TEXT,
    approval_kind TEXT,
    UNIQUE (group_name, version)
);
CREATE TABLE IF NOT EXISTS approval_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_package_arn TEXT NOT NULL REFERENCES model_packages(arn),
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    approver TEXT NOT NULL,
    reason TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    approver_display TEXT,
    kind TEXT NOT NULL DEFAULT 'four-eyes'
);
"""
# Columns added since the first schema: (table, column, declaration) for older registries.
_ADDED_COLUMNS = (
    ("model_packages", "registered_by", "TEXT"),
    ("model_packages", "approval_kind", "TEXT"),
    ("approval_decisions", "approver_display", "TEXT"),
    ("approval_decisions", "kind", f"TEXT NOT NULL DEFAULT '{FOUR_EYES}'"),
)


# (action, actor, subject, details) -> None; the workspace audit trail in practice.
AuditHook = Callable[[str, str, str, dict[str, Any]], Any]
# The same, as a context around a commit whose transaction calls mark_committed:
# the audit trail's write-ahead ``committing``, so a decision that committed is
# audited even if the process dies right after.
CommitAuditHook = Callable[[str, str, str, dict[str, Any]], AbstractContextManager[Commit]]


class RegistryError(Exception):
    """A registry request that cannot be honoured; the message says why and what to do."""


class NotFoundError(RegistryError):
    """The named group or package does not exist."""


class FourEyesError(RegistryError):
    """The approver is the account that created the model package or started its run."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def group_arn(group_name: str) -> str:
    return f"{ARN_PREFIX}:model-package-group/{group_name}"


def package_arn(group_name: str, version: int) -> str:
    return f"{ARN_PREFIX}:model-package/{group_name}/{version}"


def _validate_request(request: Mapping[str, Any]) -> None:
    """Reject CreateModelPackage requests the local registry cannot deploy later."""
    if not request.get("ModelPackageGroupName"):
        raise RegistryError(
            "CreateModelPackage request has no ModelPackageGroupName: "
            "only versioned model packages (in a group) are supported"
        )
    containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers:
        raise RegistryError(
            "CreateModelPackage request needs InferenceSpecification.Containers "
            "(at least one container with Image and ModelDataUrl)"
        )
    for index, container in enumerate(containers):
        for key in ("Image", "ModelDataUrl"):
            if not container.get(key):
                raise RegistryError(f"InferenceSpecification.Containers[{index}] has no {key}")
    status = request.get("ModelApprovalStatus", PENDING)
    if status not in APPROVAL_STATUSES:
        raise RegistryError(
            f"ModelApprovalStatus {status!r} is not one of {', '.join(APPROVAL_STATUSES)}"
        )


class LocalModelRegistry:
    """The model registry of one workspace (or any SQLite path).

    ``bus`` receives the state-change events; without one, events go to a bus
    with no rules (nothing is deployed). Use :meth:`for_workspace` to get the
    workspace bus whose rules run the deploy handler and its audit trail.
    Identities passed in (``created_by``, ``approver``) must be authenticated
    accounts: the CLI and the executor pass :func:`pipelines.core.identity.current_user`.
    """

    def __init__(
        self,
        path: str | Path,
        bus: EventBus | None = None,
        audit: AuditHook | None = None,
        commit_audit: CommitAuditHook | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bus = bus if bus is not None else EventBus()
        self._audit = audit
        self._commit_audit = commit_audit
        with stores.opening(self.path, "model registry"), self._connect() as conn:
            conn.executescript(_SCHEMA)
            _add_missing_columns(conn)

    @classmethod
    def for_workspace(cls, workspace: Workspace) -> LocalModelRegistry:
        """The workspace registry: publishes to the workspace bus, records to its audit trail."""
        from pipelines.compliance.audit import committing, record

        def audit(action: str, actor: str, subject: str, details: dict[str, Any]) -> None:
            record(workspace, action, actor=actor, subject=subject, details=details)

        def commit_audit(
            action: str, actor: str, subject: str, details: dict[str, Any]
        ) -> AbstractContextManager[Commit]:
            return committing(workspace, action, subject, details, actor=actor,
                              when_marked_in=workspace.registry_db)

        return cls(workspace.registry_db, bus=local_bus(workspace), audit=audit,
                   commit_audit=commit_audit)

    # --- connection ------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so version numbers never race."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- groups ----------------------------------------------------------------
    def create_model_package_group(
        self, name: str, description: str = "", created_by: str = "unknown"
    ) -> dict[str, str]:
        """CreateModelPackageGroup; fails if the group exists (as SageMaker does)."""
        if not name or "/" in name:
            raise RegistryError(f"invalid model package group name {name!r}")
        with self._write() as conn:
            if self._group_row(conn, name) is not None:
                raise RegistryError(f"model package group {name!r} already exists")
            self._insert_group(conn, name, description, created_by)
        return {"ModelPackageGroupArn": group_arn(name)}

    def _insert_group(
        self, conn: sqlite3.Connection, name: str, description: str, created_by: str
    ) -> None:
        conn.execute(
            "INSERT INTO model_package_groups VALUES (?, ?, ?, ?, ?)",
            (name, group_arn(name), description, created_by, _now()),
        )

    @staticmethod
    def _group_row(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
        return conn.execute("SELECT * FROM model_package_groups WHERE name = ?", (name,)).fetchone()

    def list_model_package_groups(self) -> dict[str, list[dict[str, str]]]:
        """ListModelPackageGroups (summaries, oldest first)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM model_package_groups ORDER BY created_at").fetchall()
        return {
            "ModelPackageGroupSummaryList": [
                {
                    "ModelPackageGroupName": row["name"],
                    "ModelPackageGroupArn": row["arn"],
                    "ModelPackageGroupDescription": row["description"],
                    "CreationTime": row["created_at"],
                    "ModelPackageGroupStatus": "Completed",
                }
                for row in rows
            ]
        }

    # --- packages --------------------------------------------------------------
    def create_model_package(self, request: Mapping[str, Any], created_by: str) -> dict[str, str]:
        """CreateModelPackage: register the next version of the request's group.

        ``created_by`` is the account that started the pipeline execution; the
        account of this process is recorded as ``registered_by`` (they differ
        when someone else resumed the run). Neither may approve the package.
        The group is created on first use, as the RegisterModel step does.
        Registering a package directly as ``Approved`` would skip the second
        person, so it is refused (and audited).
        """
        _validate_request(request)
        if not created_by or not identity_key(created_by):
            raise RegistryError("created_by is required: the account that started the run")
        registered_by = current_user()
        status = request.get("ModelApprovalStatus", PENDING)
        group = request["ModelPackageGroupName"]
        if status == APPROVED:
            message = (
                "a model package cannot be registered as Approved: register it as "
                "PendingManualApproval and have a second person approve it"
            )
            self._record("model.register.refused", registered_by, group, {"refusal": message})
            raise FourEyesError(message)
        stored = json.loads(json.dumps(dict(request), default=str))
        with self._write() as conn:
            if self._group_row(conn, group) is None:
                self._insert_group(conn, group, "", created_by)
            (latest,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_packages WHERE group_name = ?",
                (group,),
            ).fetchone()
            version = latest + 1
            arn = package_arn(group, version)
            conn.execute(
                "INSERT INTO model_packages (arn, group_name, version, approval_status, "
                "created_by, created_at, request_json, registered_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (arn, group, version, status, created_by, _now(), json.dumps(stored),
                 registered_by),
            )
        url = request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
        details = {"status": status, "model_data": url}
        if not same_identity(registered_by, created_by):
            details["registered_by"] = registered_by
        self._record("model.register", created_by, arn, details)
        return {"ModelPackageArn": arn}

    def _record(self, action: str, actor: str, subject: str, details: dict[str, Any]) -> None:
        if self._audit:
            self._audit(action, actor, subject, details)

    def resolve_arn(self, reference: str | int, group_name: str | None = None) -> str:
        """Turn ``"3"``, ``3`` or a full ARN into the package ARN.

        Without ``group_name`` a bare version is looked up in the only group;
        with several groups the caller must name one.
        """
        text = str(reference).strip()
        if text.startswith("arn:"):
            return text
        if not text.isdigit():
            raise RegistryError(f"{text!r} is neither a version number nor a model package ARN")
        if group_name is None:
            groups = [
                g["ModelPackageGroupName"]
                for g in self.list_model_package_groups()["ModelPackageGroupSummaryList"]
            ]
            if not groups:
                raise NotFoundError("the registry is empty: run the pipeline to register a model")
            if len(groups) > 1:
                raise RegistryError(
                    f"several model package groups exist ({', '.join(groups)}): name one "
                    "with --group"
                )
            group_name = groups[0]
        return package_arn(group_name, int(text))

    def _package_row(self, conn: sqlite3.Connection, arn: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM model_packages WHERE arn = ?", (arn,)).fetchone()
        if row is None:
            raise NotFoundError(f"model package {arn} does not exist ('fraudops model list')")
        return row

    def describe_model_package(self, arn: str) -> dict[str, Any]:
        """DescribeModelPackage: the stored request plus status, identities and times."""
        with self._connect() as conn:
            row = self._package_row(conn, arn)
        return _describe(row)

    def list_model_packages(
        self,
        group_name: str | None = None,
        approval_status: str | None = None,
        newest_first: bool = True,
    ) -> dict[str, list[dict[str, Any]]]:
        """ListModelPackages, optionally filtered by group and approval status."""
        clauses, params = [], []
        if group_name:
            clauses.append("group_name = ?")
            params.append(group_name)
        if approval_status:
            if approval_status not in APPROVAL_STATUSES:
                raise RegistryError(
                    f"unknown approval status {approval_status!r}: "
                    f"use one of {', '.join(APPROVAL_STATUSES)}"
                )
            clauses.append("approval_status = ?")
            params.append(approval_status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if newest_first else "ASC"
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM model_packages {where} ORDER BY group_name, version {order}",
                params,
            ).fetchall()
        return {"ModelPackageSummaryList": [_summary(row) for row in rows]}

    # --- approvals -------------------------------------------------------------
    def update_model_package(
        self,
        arn: str,
        approval_status: str,
        approver: str,
        reason: str,
        display_name: str | None = None,
    ) -> dict[str, Any]:
        """Record an approval decision under four-eyes and emit the state-change event.

        ``approver`` is the authenticated account deciding (the CLI passes the
        OS account); ``display_name`` is an optional label recorded beside it
        and never compared. Returns ``{"ModelPackageArn", "Deliveries"}``; the
        deliveries say what the subscribed handlers (the deployer) did. The
        decision is committed before the event is published, so a failing
        deployment never undoes it. A refused decision raises
        :class:`RegistryError` (:class:`FourEyesError` for four-eyes) and is audited.
        """
        return self._decide(arn, approval_status, approver, reason, display_name, FOUR_EYES)

    def demo_approve(
        self, arn: str, approver: str, reason: str, display_name: str | None = None
    ) -> dict[str, Any]:
        """Approve as a *demo*: no four-eyes check, and recorded as a demo everywhere.

        For ``fraudops run``, which trains and approves on one laptop under one
        account to show the whole flow. The decision's kind is ``demo``, the
        package's ``ApprovalKind`` says so, the audit action is
        ``model.approve.demo``, and ``model show`` and the model card print it.
        """
        return self._decide(arn, APPROVED, approver, reason, display_name, DEMO)

    def _decide(
        self,
        arn: str,
        approval_status: str,
        approver: str,
        reason: str,
        display_name: str | None,
        kind: str,
    ) -> dict[str, Any]:
        verb = {APPROVED: "approve", REJECTED: "reject"}.get(approval_status, "decide")
        # Typed text is stored, shown and audited: a card number in it never is.
        display = clean_display_name(display_name)
        display = mask_card_numbers(display) if display else None
        reason = mask_card_numbers(reason or "")
        action = f"model.{verb}.demo" if kind == DEMO else f"model.{verb}"
        details = {"to": approval_status, "reason": reason}
        if display:
            details["display_name"] = display
        try:
            with self._audited_commit(action, approver, arn, details) as commit:
                row = self._commit_decision(
                    arn, approval_status, approver, reason, display, kind, commit
                )
                commit.outcome["from"] = row["approval_status"]
        except RegistryError as exc:
            details = {"to": approval_status, "kind": kind, "refusal": str(exc)}
            if display:
                details["display_name"] = display
            self._record(f"model.{verb}.refused", approver, arn, details)
            raise
        deliveries = self._emit_state_change(arn)
        return {"ModelPackageArn": arn, "Deliveries": deliveries}

    def _commit_decision(
        self,
        arn: str,
        approval_status: str,
        approver: str,
        reason: str,
        display: str | None,
        kind: str,
        commit: Commit,
    ) -> sqlite3.Row:
        """Check and store one decision; returns the package row as it was before."""
        if approval_status not in (APPROVED, REJECTED):
            raise RegistryError(
                f"a decision sets ModelApprovalStatus to Approved or Rejected, "
                f"not {approval_status!r}"
            )
        if not approver or not identity_key(approver):
            raise RegistryError("an approver account is required for every decision")
        if not reason or not reason.strip():
            raise RegistryError("a reason is required for every approval decision (--reason)")
        with self._write() as conn:
            row = self._package_row(conn, arn)
            self._check_decision(row, approval_status, approver, kind)
            now = _now()
            conn.execute(
                "UPDATE model_packages SET approval_status = ?, last_modified_by = ?, "
                "last_modified_at = ?, approval_description = ?, approval_kind = ? "
                "WHERE arn = ?",
                (approval_status, approver, now, reason, kind, arn),
            )
            conn.execute(
                "INSERT INTO approval_decisions (model_package_arn, from_status, to_status, "
                "approver, reason, decided_at, approver_display, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (arn, row["approval_status"], approval_status, approver, reason, now, display,
                 kind),
            )
            if commit.op_id:
                mark_committed(conn, commit)
        return row

    @contextmanager
    def _audited_commit(
        self, action: str, actor: str, subject: str, details: dict[str, Any]
    ) -> Iterator[Commit]:
        """The decision's audit entry, written with its commit (``commit_audit``) or after it."""
        if self._commit_audit is not None:
            with self._commit_audit(action, actor, subject, details) as commit:
                yield commit
            return
        commit = Commit(op_id="", outcome={})
        yield commit
        self._record(action, actor, subject, {**details, **commit.outcome})

    def _check_decision(self, row: sqlite3.Row, to_status: str, approver: str, kind: str) -> None:
        current = row["approval_status"]
        if to_status not in TRANSITIONS[current]:
            allowed = ", ".join(TRANSITIONS[current]) or "none (final)"
            raise RegistryError(
                f"model package {row['arn']} is {current}; it cannot become {to_status} "
                f"(allowed: {allowed})"
            )
        if kind == DEMO:
            return
        creators = (row["created_by"], row["registered_by"] or row["created_by"])
        if any(same_identity(approver, creator) for creator in creators):
            # Deliberately no hint at what would pass: the rule is a different person.
            raise FourEyesError(
                f"four-eyes rule: the account {approver!r} registered {row['arn']} or "
                "started the run that did; the decision must come from a different person"
            )

    def _emit_state_change(self, arn: str) -> list[Delivery]:
        detail = self.describe_model_package(arn)
        return self.bus.publish(
            source=SAGEMAKER_SOURCE,
            detail_type=MODEL_PACKAGE_STATE_CHANGE,
            detail=detail,
            resources=[arn],
        )

    def list_decisions(self, arn: str | None = None) -> list[dict[str, Any]]:
        """Every approval decision ever made (for one package, or all), oldest first."""
        query = "SELECT * FROM approval_decisions"
        params: tuple[str, ...] = ()
        if arn:
            query += " WHERE model_package_arn = ?"
            params = (arn,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", params).fetchall()
        return [
            {
                "ModelPackageArn": row["model_package_arn"],
                "FromStatus": row["from_status"],
                "ToStatus": row["to_status"],
                "Approver": row["approver"],
                "ApproverDisplayName": row["approver_display"],
                "Kind": row["kind"],
                "Reason": row["reason"],
                "DecidedAt": row["decided_at"],
            }
            for row in rows
        ]


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    request = json.loads(row["request_json"])
    return {
        "ModelPackageGroupName": row["group_name"],
        "ModelPackageVersion": row["version"],
        "ModelPackageArn": row["arn"],
        "ModelPackageDescription": request.get("ModelPackageDescription", ""),
        "CreationTime": row["created_at"],
        "ModelPackageStatus": "Completed",
        "ModelApprovalStatus": row["approval_status"],
    }


def _describe(row: sqlite3.Row) -> dict[str, Any]:
    request = json.loads(row["request_json"])
    described = {
        key: value
        for key, value in request.items()
        if key not in ("ModelApprovalStatus", "ModelPackageGroupName", "ClientToken")
    }
    described.update(_summary(row))
    described["ModelPackageStatusDetails"] = {
        "ValidationStatuses": [],
        "ImageScanStatuses": [],
    }
    described["CreatedBy"] = {"UserProfileName": row["created_by"]}
    described["RegisteredBy"] = {"UserProfileName": row["registered_by"] or row["created_by"]}
    if row["last_modified_by"]:
        described["LastModifiedBy"] = {"UserProfileName": row["last_modified_by"]}
        described["LastModifiedTime"] = row["last_modified_at"]
        described["ApprovalDescription"] = row["approval_description"]
        described["ApprovalKind"] = row["approval_kind"] or FOUR_EYES
    return described


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a registry written by an older version up to the current schema."""
    for table, column, declaration in _ADDED_COLUMNS:
        present = {info[1] for info in conn.execute(f"PRAGMA table_info({table})")}
        if column in present:
            continue
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
