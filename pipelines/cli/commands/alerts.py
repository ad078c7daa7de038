"""``fraudops alerts`` and ``fraudops case``: the investigators' queue.

Locally the queue is SQLite; ``fraudops case show|assign|close ID --backend aws
--env ENV`` works the case the alert Lambda opened in the AWS lake's ``cases``
table (``pipelines.serving.alerts.lake_queue``), audited in the local trail.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import (
    UserError,
    add_aws_arguments,
    add_workdir_argument,
    athena_target,
    aws_errors,
    aws_session,
    open_workspace,
)
from pipelines.core.identity import current_user
from pipelines.data.labels import write_labels
from pipelines.serving.alerts.cases import (
    DISPOSITIONS,
    Case,
    CaseError,
    CaseQueue,
    labels_from_cases,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    alerts = subparsers.add_parser("alerts", help="list fraud alerts and their cases")
    alerts_actions = alerts.add_subparsers(dest="alerts_action", required=True)
    listing = alerts_actions.add_parser("list", help="alerts, most severe and newest first")
    listing.add_argument("--status", choices=["open", "in_review", "closed"])
    listing.add_argument("--limit", type=int, default=50)
    add_workdir_argument(listing)
    listing.set_defaults(handler=_list)

    case = subparsers.add_parser("case", help="work a case: show, assign, note, close")
    actions = case.add_subparsers(dest="case_action", required=True)
    for name, handler, help_text in (
        ("show", _show, "the case, its alert, reasons and history"),
        ("assign", _assign, "assign to an investigator (moves it to in_review)"),
        ("note", _note, "add a note"),
        ("close", _close, "close with a disposition (becomes a training label)"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("case_id", type=int, metavar="ID")
        add_workdir_argument(action)
        action.add_argument("--actor", default=current_user())
        action.set_defaults(handler=handler)
        if name == "assign":
            action.add_argument("--to", required=True, dest="assignee")
        if name in ("note", "close"):
            action.add_argument("--note", default="", required=name == "note")
        if name == "close":
            action.add_argument("--disposition", required=True, choices=sorted(DISPOSITIONS))
        if name != "note":  # on AWS a case row has no notes; the audit trail keeps them locally
            action.add_argument(
                "--backend", choices=("local", "aws"), default="local",
                help="aws: the case in the lake's cases table of --env (opened by the alert "
                "Lambda), written back only if nobody changed it meanwhile")
            add_aws_arguments(action)


def _queue(args: argparse.Namespace) -> CaseQueue:
    return CaseQueue(open_workspace(args).cases_db)


def _list(args: argparse.Namespace) -> int:
    rows = _queue(args).list_alerts(status=args.status, limit=args.limit)
    table = Table(title=f"fraud alerts ({len(rows)} shown)")
    for column in ("case", "severity", "status", "card", "amount", "score", "when", "grouped",
                   "top reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["case_id"]), row["severity"], row["status"], row["card_id"],
            f"{row['amount']:,.2f}" if row["amount"] is not None else "",
            f"{row['score']:.3f}", row["tx_timestamp"][:19], str(row["grouped"]),
            row["reasons"][0] if row["reasons"] else "",
        )
    Console().print(table)
    return 0


def _print_case(case: Case) -> None:
    console = Console()
    alert = case.alert
    console.print(f"[bold]case {case.case_id}[/]  {case.status}  assignee={case.assignee or '-'}"
                  f"  disposition={case.disposition or '-'}")
    console.print(f"alert {alert['alert_id']}: {alert['severity']} score {alert['score']:.3f} "
                  f"card {alert['card_id']} terminal {alert['terminal_id']} "
                  f"amount {alert['amount']} at {alert['tx_timestamp']} "
                  f"(model {alert['model_version']})")
    for reason in alert["reasons"]:
        console.print(f"  - {reason}")
    for event in case.events:
        detail = event["detail"] or ""
        console.print(f"  {event['at']}  {event['actor']}: {event['action']} {detail}")


def _run(args: argparse.Namespace, action, audit_action: str = "") -> int:
    """Do ``action``; on success audit it (case decisions are compliance records)."""
    try:
        case = action()
    except CaseError as exc:
        raise UserError(str(exc)) from None
    if audit_action:
        from pipelines.compliance.audit import record

        record(open_workspace(args), audit_action, actor=args.actor,
               subject=f"case:{case.case_id}",
               details={"status": case.status, "assignee": case.assignee,
                        "disposition": case.disposition,
                        "transaction_id": case.alert["transaction_id"]})
    _print_case(case)
    return 0


def _lake_queue(args: argparse.Namespace):
    from pipelines.serving.alerts.lake_queue import LakeCaseQueue

    session = aws_session(args)
    return LakeCaseQueue(session.client("s3"), athena_target(args, session).lake_bucket)


def _run_aws(args: argparse.Namespace, action: str, audit_action: str = "") -> int:
    """The case in the AWS lake: show it, or change it and audit the change locally."""
    try:
        queue = _lake_queue(args)
        if action == "assign":
            row = queue.assign(args.case_id, args.assignee)
        elif action == "close":
            row = queue.close(args.case_id, args.disposition, args.actor)
        else:
            row = queue.show(args.case_id)
    except (CaseError, *aws_errors()) as exc:
        raise UserError(str(exc)) from None
    if audit_action:
        from pipelines.compliance.audit import record

        record(open_workspace(args), audit_action, actor=args.actor,
               subject=f"case:{row['case_id']}",
               details={"backend": "aws", "lake": queue.bucket, "status": row["status"],
                        "assignee": row["assignee"], "disposition": row["disposition"],
                        "alert_id": row["alert_id"]})
    Console().print(f"[bold]case {row['case_id']}[/] (s3://{queue.bucket}/cases/)  "
                    f"{row['status']}  assignee={row['assignee'] or '-'}  "
                    f"disposition={row['disposition'] or '-'}  alert {row['alert_id']}  "
                    f"opened {row['opened_at']}  updated {row['updated_at']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.backend == "aws":
        return _run_aws(args, "show")
    return _run(args, lambda: _queue(args).show(args.case_id))


def _assign(args: argparse.Namespace) -> int:
    if args.backend == "aws":
        return _run_aws(args, "assign", "case.assign")
    return _run(args, lambda: _queue(args).assign(args.case_id, args.assignee, args.actor),
                "case.assign")


def _note(args: argparse.Namespace) -> int:
    return _run(args, lambda: _queue(args).add_note(args.case_id, args.note, args.actor),
                "case.note")


def _close(args: argparse.Namespace) -> int:
    if args.backend == "aws":
        return _run_aws(args, "close", "case.close")

    def close() -> Case:
        case = _queue(args).close(args.case_id, args.disposition, args.actor, args.note)
        write_labels(open_workspace(args), labels_from_cases([case]))
        return case

    return _run(args, close, "case.close")
