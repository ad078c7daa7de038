"""``fraudops backup``: the local vault (snapshots, verify, restore, retention, legal holds).

fraudops backup create [--zone Z ...]        incremental snapshot of the workspace
fraudops backup list                          snapshots with size and retain-until
fraudops backup verify [SNAPSHOT ...]         authenticate manifests, re-hash every object,
                                              cross-check the audit trail (exit 1 on damage)
fraudops backup restore SNAPSHOT --to DIR [--key-file PATH] [--replace]
                                              a complete workspace, hashes checked
fraudops backup adopt                         re-sign manifests of older versions
fraudops backup prune [SNAPSHOT ...]          expire + garbage-collect, or delete named
fraudops backup schedule [daily|12h|off]      show or set the schedule
fraudops backup run-scheduled                 snapshot if due (for cron / the runner)
fraudops backup retention [--set ZONE=DAYS]   show or change retention rules
fraudops backup hold list|add|release         legal holds
fraudops backup minimise                      remove expired working data (audited)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace

Handler = Callable[[argparse.Namespace], int]


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"


def _guarded(handler: Handler) -> Handler:
    """Turn the compliance errors a user can act on into ``UserError`` (exit 2, no traceback)."""

    def run(args: argparse.Namespace) -> int:
        from pipelines.compliance.audit import AuditError
        from pipelines.compliance.locks import LockTimeout
        from pipelines.compliance.policy import PolicyError
        from pipelines.compliance.vault.layout import VaultError
        from pipelines.core.keys import KeyFileError

        try:
            return handler(args)
        except (VaultError, PolicyError, LockTimeout, AuditError, KeyFileError) as exc:
            raise UserError(str(exc)) from exc

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backup",
        help="local backup vault: snapshots, verify, restore, retention, legal holds",
        description="Content-addressed, incremental snapshots of the lake, records, "
        "databases and model artifacts, with retain-until locks and legal holds.",
    )
    actions = parser.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    _register_create(actions)
    _register_simple(actions)
    _register_restore(actions)
    _register_prune(actions)
    _register_schedule(actions)
    _register_retention(actions)
    _register_hold(actions)
    _register_minimise(actions)


def _sub(actions: argparse._SubParsersAction, name: str, help_text: str, handler: Handler):
    parser = actions.add_parser(name, help=help_text, description=help_text)
    add_workdir_argument(parser)
    parser.set_defaults(handler=_guarded(handler))
    return parser


# --- create / list / verify ------------------------------------------------------


def _register_create(actions: argparse._SubParsersAction) -> None:
    from pipelines.compliance.policy import ALL_ZONES

    parser = _sub(actions, "create", "take an incremental snapshot now", _create)
    parser.add_argument(
        "--zone",
        action="append",
        choices=ALL_ZONES,
        help="back up only these zones (repeatable; default: all)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for running writers to finish (default 600)",
    )


def _print_backup(result) -> None:
    snapshot = result.snapshot
    print(
        f"snapshot {snapshot.snapshot_id}: {result.files} files, {_human(result.bytes_total)}; "
        f"stored {result.objects_written} new objects, {_human(result.bytes_written)} written "
        f"({result.bytes_written:,} bytes); retain until {snapshot.retain_until}"
    )


def _create(args: argparse.Namespace) -> int:
    from pipelines.compliance.policy import ALL_ZONES
    from pipelines.compliance.vault.snapshot import create_snapshot

    ws = open_workspace(args)
    result = create_snapshot(
        ws, zones=args.zone or ALL_ZONES, progress=True, lock_timeout=args.lock_timeout
    )
    _print_backup(result)
    return 0


def _register_simple(actions: argparse._SubParsersAction) -> None:
    parser = _sub(actions, "list", "list snapshots, oldest first", _list)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser = _sub(actions, "verify", "re-hash every object of the snapshots", _verify)
    parser.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="default: all")
    _sub(actions, "run-scheduled", "take a snapshot if the schedule says one is due", _scheduled)
    _sub(
        actions,
        "adopt",
        "re-sign legacy (unsigned) manifests; retention can only lengthen",
        _adopt,
    )


def _list(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.manifest import list_snapshots

    snapshots = list_snapshots(open_workspace(args))
    if args.json:
        print(json.dumps([s.to_json() | {"entries": len(s.entries)} for s in snapshots], indent=1))
        return 0
    table = Table(title=f"{len(snapshots)} snapshot(s)")
    for column in ("snapshot", "created", "by", "trigger", "files", "size", "retain until"):
        table.add_column(column)
    for s in snapshots:
        table.add_row(
            s.snapshot_id,
            s.created_at,
            s.created_by,
            s.trigger,
            f"{len(s.entries):,}",
            _human(s.size),
            s.retain_until,
        )
    Console().print(table)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipelines.compliance import audit
    from pipelines.compliance.vault.verify import verify_snapshots

    ws = open_workspace(args)
    report = verify_snapshots(ws, args.snapshots or None, progress=True)
    for problem in report.problems:
        print(f"DAMAGED {problem}")
    for snapshot_id in report.legacy:
        print(
            f"UNAUTHENTICATED snapshot {snapshot_id}: legacy manifest (written before manifests "
            "were signed); its dates are not trusted and prune keeps it; see 'backup adopt'"
        )
    failures = len(report.problems) + len(report.legacy)
    status = "OK" if report.ok else f"FAILED ({failures} problem(s))"
    print(
        f"verify {status}: {report.snapshots} snapshot(s), {report.objects} object(s), "
        f"{_human(report.bytes_checked)} re-hashed"
    )
    details = {
        "snapshots": report.snapshots,
        "objects": report.objects,
        "problems": report.problems,
        "legacy": report.legacy,
    }
    try:
        audit.record(ws, "backup.verify", None, ",".join(args.snapshots) or "all", details)
    except audit.AuditError as exc:
        # A trail that does not authenticate is not extended; the findings above stand.
        print(f"not recorded in the audit trail: {exc}")
        return 1
    return 0 if report.ok else 1


def _adopt(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.pruning import adopt_legacy

    adopted = adopt_legacy(open_workspace(args))
    print(f"adopted {len(adopted)} legacy snapshot(s): {', '.join(adopted) or '-'}")
    return 0


def _scheduled(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.schedule import get_schedule, last_snapshot_time, run_if_due

    ws = open_workspace(args)
    result = run_if_due(ws, progress=True)
    if result is None:
        print(
            f"no backup due (schedule {get_schedule(ws).describe()}, "
            f"last snapshot {last_snapshot_time(ws) or 'never'})"
        )
        return 0
    _print_backup(result)
    return 0


# --- restore / prune / schedule ----------------------------------------------------


def _register_restore(actions: argparse._SubParsersAction) -> None:
    from pipelines.compliance.policy import ALL_ZONES

    parser = _sub(
        actions,
        "restore",
        "restore a snapshot as a complete, independent workspace in a new directory",
        _restore,
    )
    parser.add_argument("snapshot", metavar="SNAPSHOT")
    parser.add_argument(
        "--to",
        required=True,
        type=Path,
        help="new or empty directory outside any workspace (or a live workspace with --replace)",
    )
    parser.add_argument("--zone", action="append", choices=ALL_ZONES, help="only these zones")
    parser.add_argument(
        "--key-file",
        type=Path,
        help="the tokenisation key the data was written with (never in a snapshot); checked "
        "against the snapshot's key id and installed in the restored workspace",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="restore over the live workspace at --to; what it replaces is snapshotted first",
    )


def _restore(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.restore import restore_snapshot
    from pipelines.core.keys import read_key_file

    token_key = read_key_file(args.key_file, "token key") if args.key_file else None
    result = restore_snapshot(
        open_workspace(args),
        args.snapshot,
        args.to,
        zones=args.zone,
        progress=True,
        token_key=token_key,
        replace=args.replace,
    )
    replaced = (
        f"; what it replaced is snapshot {result.replaced_snapshot_id}"
        if result.replaced_snapshot_id
        else ""
    )
    print(
        f"restored {result.files} files ({_human(result.bytes_restored)}) of "
        f"{result.snapshot_id} to {result.target}; every file matched its SHA-256{replaced}"
    )
    return 0


def _register_prune(actions: argparse._SubParsersAction) -> None:
    parser = _sub(
        actions,
        "prune",
        "remove expired data and unreferenced objects; with SNAPSHOT ids, delete those "
        "snapshots (refused while locked or held)",
        _prune,
    )
    parser.add_argument("snapshots", nargs="*", metavar="SNAPSHOT")


def _prune(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.layout import SnapshotLocked
    from pipelines.compliance.vault.pruning import delete_snapshots, prune

    ws = open_workspace(args)
    if args.snapshots:
        try:
            result = delete_snapshots(ws, args.snapshots)
        except SnapshotLocked as exc:
            print(f"fraudops backup prune: refused: {exc}")
            return 1
        print(f"deleted {', '.join(result.snapshots_removed)}")
    else:
        result = prune(ws)
        print(
            f"expired {result.entries_expired} entries, removed "
            f"{len(result.snapshots_removed)} snapshot(s)"
        )
        for snapshot_id, until in result.kept_locked:
            print(f"kept {snapshot_id}: locked until {until}")
        for snapshot_id, hold_id in sorted(set(result.kept_held)):
            print(f"kept expired data of {snapshot_id}: legal hold {hold_id}")
        for snapshot_id, why in result.kept_untrusted:
            print(f"kept {snapshot_id} whole, its retention is not trusted: {why}")
    print(f"garbage-collected {result.objects_removed} objects ({_human(result.bytes_freed)})")
    return 0


def _register_schedule(actions: argparse._SubParsersAction) -> None:
    parser = _sub(actions, "schedule", "show or set how often backups run", _schedule)
    parser.add_argument(
        "spec", nargs="?", help="daily (default), hourly, weekly, off, <N>h or <N>d"
    )


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.compliance.vault.schedule import (
        due,
        get_schedule,
        last_snapshot_time,
        parse_schedule,
        set_schedule,
    )

    ws = open_workspace(args)
    schedule = set_schedule(ws, parse_schedule(args.spec)) if args.spec else get_schedule(ws)
    print(
        f"schedule: {schedule.describe()}; last snapshot: {last_snapshot_time(ws) or 'never'}; "
        f"due now: {'yes' if due(ws) else 'no'}"
    )
    return 0


# --- retention, holds, minimisation ---------------------------------------------------


def _register_retention(actions: argparse._SubParsersAction) -> None:
    parser = _sub(actions, "retention", "show or change retention days per zone", _retention)
    parser.add_argument(
        "--set", action="append", default=[], metavar="ZONE=DAYS", help="repeatable"
    )


def _retention(args: argparse.Namespace) -> int:
    from pipelines.compliance import audit
    from pipelines.compliance.policy import RECORD_ZONES, retention_rules, set_retention

    ws = open_workspace(args)
    changes = {}
    for item in args.set:
        zone, _, days = item.partition("=")
        if not days.isdigit():
            raise UserError(f"--set {item!r}: expected ZONE=DAYS, e.g. scored=35")
        changes[zone] = int(days)
    if changes:
        audit.ensure_writable(ws)
        rules = set_retention(ws, changes)
        audit.record(ws, "retention.rules.set", None, "vault", {"changes": changes})
    else:
        rules = retention_rules(ws)
    for zone, days in rules.items():
        kind = "record" if zone in RECORD_ZONES else "working"
        print(f"{zone:12} {days:5d} days  ({kind})")
    return 0


def _register_hold(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("hold", help="list, place or release legal holds")
    verbs = parser.add_subparsers(dest="hold_command", metavar="VERB", required=True)
    _sub(verbs, "list", "list legal holds", _hold_list)
    add = _sub(verbs, "add", "place a legal hold", _hold_add)
    add.add_argument("--zone", required=True, help="zone name or '*'")
    add.add_argument("--prefix", default="", help="path prefix in the zone, e.g. dt=2026-01-05")
    add.add_argument("--snapshot", default="", help="only this snapshot")
    add.add_argument("--reason", required=True, help="case or request reference")
    release = _sub(verbs, "release", "release a legal hold", _hold_release)
    release.add_argument("hold_id", metavar="HOLD_ID")


def _hold_list(args: argparse.Namespace) -> int:
    from pipelines.compliance.policy import legal_holds

    holds = legal_holds(open_workspace(args))
    for h in holds:
        scope = f" snapshot {h.snapshot}" if h.snapshot else ""
        print(
            f"{h.hold_id}  {h.zone}/{h.prefix}*{scope}  by {h.placed_by} {h.placed_at}: {h.reason}"
        )
    if not holds:
        print("no legal holds")
    return 0


def _hold_add(args: argparse.Namespace) -> int:
    from pipelines.compliance import audit
    from pipelines.compliance.policy import place_legal_hold

    ws = open_workspace(args)
    actor = audit.default_actor()
    audit.ensure_writable(ws)  # a hold is never placed unaudited
    hold = place_legal_hold(ws, args.zone, args.prefix, args.reason, actor, args.snapshot)
    audit.record(ws, "retention.hold.place", actor, hold.hold_id, hold.__dict__)
    print(f"placed {hold.hold_id} on {hold.zone}/{hold.prefix}*")
    return 0


def _hold_release(args: argparse.Namespace) -> int:
    from pipelines.compliance import audit
    from pipelines.compliance.policy import release_legal_hold

    ws = open_workspace(args)
    audit.ensure_writable(ws)  # a hold is never released unaudited
    hold = release_legal_hold(ws, args.hold_id)
    audit.record(ws, "retention.hold.release", None, hold.hold_id, {"reason": hold.reason})
    print(f"released {hold.hold_id}")
    return 0


def _register_minimise(actions: argparse._SubParsersAction) -> None:
    from pipelines.compliance.policy import DEFAULT_MINIMISE_ZONES, LAKE_ZONES

    parser = _sub(
        actions,
        "minimise",
        "delete working-data day partitions past retention (legal holds honoured), "
        "then prune the vault",
        _minimise,
    )
    parser.add_argument(
        "--zone",
        action="append",
        choices=LAKE_ZONES,
        help=f"repeatable (default: {', '.join(DEFAULT_MINIMISE_ZONES)})",
    )
    parser.add_argument("--older-than-days", type=int, default=None)


def _minimise(args: argparse.Namespace) -> int:
    from pipelines.compliance.policy import DEFAULT_MINIMISE_ZONES
    from pipelines.compliance.retention import minimise

    result = minimise(
        open_workspace(args),
        zones=args.zone or DEFAULT_MINIMISE_ZONES,
        older_than_days=args.older_than_days,
    )
    print(f"removed {len(result.removed)} partition(s): {', '.join(result.removed) or '-'}")
    for held in result.held:
        print(f"kept under legal hold: {held}")
    if result.vault:
        print(
            f"vault: {result.vault.entries_expired} expired entries, "
            f"{result.vault.objects_removed} objects removed"
        )
    return 0
