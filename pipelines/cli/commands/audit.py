"""``fraudops audit``: read and verify the authenticated, hash-chained audit trail.

fraudops audit list [--action backup] [--since 7d] [--actor A] [--subject S] [--json]
fraudops audit verify        exit 1 naming the first bad seq (or an unauthenticated trail)
fraudops audit seal          authenticate from here on a trail written by an older fraudops
fraudops audit checkpoint --env ENV   the verified head into the AWS records bucket (Object Lock)
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import (
    UserError,
    add_aws_arguments,
    add_workdir_argument,
    aws_errors,
    aws_session,
    open_workspace,
    records_bucket,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="list or verify the append-only, hash-chained audit trail",
        description="Every ingestion, pipeline run, registration, approval, deployment, "
        "disposition, report and backup is recorded in records/audit/audit.jsonl.",
    )
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="entries, oldest first, optionally filtered")
    listing.add_argument("--action", help="exact action or dotted prefix (e.g. backup)")
    listing.add_argument("--since", help="2026-01-31, an ISO timestamp, or 12h / 7d / 2w")
    listing.add_argument("--actor", help="only entries by this actor")
    listing.add_argument("--subject", help="only entries whose subject contains this text")
    listing.add_argument("--limit", type=int, default=None, help="only the newest N entries")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    add_workdir_argument(listing)
    listing.set_defaults(handler=run_list)
    verifying = actions.add_parser(
        "verify",
        help="check the chain end to end: MACs, order, head, and the heads backups anchored",
    )
    add_workdir_argument(verifying)
    verifying.set_defaults(handler=run_verify)
    sealing = actions.add_parser(
        "seal",
        help="seal a legacy (unauthenticated) trail written by an older fraudops",
        description="Appends an authenticated audit.seal entry covering the legacy entries. "
        "Only for a trail you know predates authentication: a trail that was authenticated "
        "and now is not was re-written.",
    )
    add_workdir_argument(sealing)
    sealing.set_defaults(handler=run_seal)
    checkpointing = actions.add_parser(
        "checkpoint",
        help="store the verified trail head (seq, hash, MAC) in the AWS records bucket",
        description="Verifies the trail, then writes its MAC'd head to s3://<records bucket>/"
        "audit/checkpoints/ under Object Lock (compliance mode, the records retention): an "
        "anchor nobody can delete or rewrite, so a later truncation or rewrite is detectable.",
    )
    add_aws_arguments(checkpointing, required=True)
    add_workdir_argument(checkpointing)
    checkpointing.set_defaults(handler=run_checkpoint)


def run_list(args: argparse.Namespace) -> int:
    from pipelines.compliance.audit import list_entries, parse_since

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    entries = list_entries(
        open_workspace(args),
        action=args.action,
        since=since,
        actor=args.actor,
        subject=args.subject,
    )
    if args.limit:
        entries = entries[-args.limit :]
    if args.json:
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return 0
    table = Table(title=f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'}")
    for column in ("seq", "time (UTC)", "actor", "action", "subject", "details"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry["seq"]),
            entry["ts"][:19],
            entry["actor"],
            entry["action"],
            str(entry["subject"]),
            json.dumps(entry["details"], sort_keys=True)[:200],
        )
    Console().print(table)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pipelines.compliance.audit import audit_log_path, verify
    from pipelines.compliance.vault.layout import VaultError
    from pipelines.compliance.vault.manifest import audit_anchors, list_snapshots

    ws = open_workspace(args)
    try:
        anchors = audit_anchors(list_snapshots(ws))
    except VaultError as exc:
        raise UserError(str(exc)) from exc
    report = verify(ws, anchors)
    if report.first_bad_seq is not None:
        print(
            f"audit trail BROKEN at seq {report.first_bad_seq}: {report.problem} "
            f"({report.entries} entries verified before it)"
        )
        return 1
    if report.unauthenticated:
        print(
            f"audit trail UNAUTHENTICATED: {report.legacy_entries} legacy entries chain "
            "correctly but carry no MAC, so anyone could have re-written them. If an older "
            "fraudops wrote them, run 'fraudops audit seal'"
        )
        return 1
    legacy = (
        f"; the first {report.legacy_entries} legacy entries predate authentication (sealed)"
        if report.legacy_entries
        else ""
    )
    print(
        f"audit trail OK: {report.entries} entries, chain intact and authenticated, "
        f"{report.anchors_checked} backup anchor(s) matched{legacy} ({audit_log_path(ws)})"
    )
    return 0


def run_seal(args: argparse.Namespace) -> int:
    from pipelines.compliance.audit import AuditError, seal

    try:
        entry = seal(open_workspace(args))
    except AuditError as exc:
        raise UserError(str(exc)) from exc
    if entry is None:
        print("nothing to seal: the trail is empty or already authenticated")
    else:
        print(
            f"sealed {entry['details']['legacy_entries']} legacy entries with seq {entry['seq']}"
        )
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    from pipelines.compliance.audit import AuditError
    from pipelines.compliance.records_bucket import checkpoint_trail

    try:
        records = records_bucket(args, aws_session(args))
        stored = checkpoint_trail(open_workspace(args), records)
    except (AuditError, *aws_errors()) as exc:
        raise UserError(str(exc)) from exc
    print(f"audit checkpoint {records.uri(stored.key)} (version {stored.version_id}), "
          f"locked until {stored.retain_until:%Y-%m-%d}")
    return 0
