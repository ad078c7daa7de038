"""``fraudops athena``: the named-query library, Athena tables and the alert/case export.

    fraudops athena list                                  # named queries and their parameters
    fraudops athena query --named fraud_rate_by_day --param start_day=2024-01-01
    fraudops athena query --named riskiest_terminals --backend aws --env dev
    fraudops athena ddl --database fraudops_dev --lake-bucket my-lake
    fraudops athena create-tables --env dev               # DDL with partition projection
    fraudops athena create-named-queries --env dev        # the library as Athena named queries
    fraudops athena export                                # SQLite alert/case queue -> lake
    fraudops athena quicksight --env dev --owner-arn ARN \
        --rls fraud-analysts:channel --rls ecommerce-analysts:channel=ecommerce
"""

from __future__ import annotations

import argparse
import sys

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
from pipelines.cli.commands.query import emit
from pipelines.data.lake.catalog import CatalogError
from pipelines.data.lake.query import QueryError

_QUEUE_TABLES = ("alerts", "cases")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "athena", help="named Athena queries (local or AWS), Athena DDL, alert/case export"
    )
    actions = parser.add_subparsers(dest="athena_action", required=True)

    listing = actions.add_parser("list", help="the named queries, what they answer, parameters")
    listing.set_defaults(handler=_list)

    query = actions.add_parser("query", help="run a named query locally (DuckDB) or on Athena")
    query.add_argument("--named", required=True, metavar="NAME", help="see `fraudops athena list`")
    query.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="set a declared parameter (repeatable); others keep their defaults")
    query.add_argument("--backend", choices=("local", "aws"), default="local")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument("--max-rows", type=int, default=200)
    query.add_argument("--no-export", action="store_true",
                       help="local: do not refresh the alerts/cases export before querying")
    add_aws_arguments(query)
    add_workdir_argument(query)
    query.set_defaults(handler=_query)

    ddl = actions.add_parser("ddl", help="print the CREATE EXTERNAL TABLE statements")
    ddl.add_argument("--database", default="fraudops_dev")
    ddl.add_argument("--lake-bucket", default="fraudops-dev-lake")
    ddl.add_argument("--projection-start", default=None,
                     help="first day partition projection covers (default 2020-01-01)")
    ddl.set_defaults(handler=_ddl)

    create = actions.add_parser("create-tables", help="create every lake table in Athena")
    create.add_argument("--projection-start", default=None,
                        help="first day partition projection covers (default 2020-01-01)")
    add_aws_arguments(create, required=True)
    create.set_defaults(handler=_create_tables)

    named = actions.add_parser("create-named-queries",
                               help="create or update the library as Athena named queries")
    add_aws_arguments(named, required=True)
    named.set_defaults(handler=_create_named)

    quicksight = actions.add_parser(
        "quicksight", help="create or update the QuickSight data source, SPICE datasets from "
        "the named queries, RLS rules, refresh schedules and dashboard")
    add_aws_arguments(quicksight, required=True)
    quicksight.add_argument("--owner-arn", required=True,
                            help="QuickSight user or group ARN that administers the assets")
    quicksight.add_argument("--viewer-group-arn", action="append", default=[],
                            help="QuickSight group ARN allowed to view the dashboard (repeatable)")
    quicksight.add_argument("--rls", action="append", default=[], metavar="GROUP:FIELD[=V1,V2]",
                            help="row-level security: GROUP sees rows whose FIELD is one of the "
                            "values (no values: every row); repeatable")
    quicksight.add_argument("--refresh-time", default="06:00", help="daily SPICE refresh, HH:MM")
    quicksight.set_defaults(handler=_quicksight)

    export = actions.add_parser("export", help="write the alert/case queue to the lake")
    add_workdir_argument(export)
    export.set_defaults(handler=_export)


def parse_named_params(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs; the named query converts each value to its declared type."""
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param {item!r}: expected NAME=VALUE, e.g. start_day=2024-01-31")
        params[name.strip().lstrip(":")] = value
    return params


def _list(args: argparse.Namespace) -> int:
    from pipelines.data.lake.named_queries import load_library

    table = Table(title="named queries (pipelines/data/lake/queries)")
    for column in ("name", "answers", "parameters (default)"):
        table.add_column(column, overflow="fold")
    for name, query in sorted(load_library().items()):
        params = "\n".join(f"{p.name}={p.default} ({p.type})" for p in query.params)
        table.add_row(name, query.answers, params)
    Console().print(table)
    return 0


def _runner(args: argparse.Namespace):
    from pipelines.data.lake.athena_client import AthenaRunner

    session = aws_session(args)
    return AthenaRunner(session.client("athena"), athena_target(args, session))


def _query(args: argparse.Namespace) -> int:
    from pipelines.data.lake.named_queries import NamedQueryError, get_query

    params = parse_named_params(args.param)
    try:
        query = get_query(args.named)
        if args.backend == "aws":
            table = _runner(args).run_named(query, params)
        else:
            table = _run_local(args, query.name, params, query.sql)
    except (NamedQueryError, QueryError, CatalogError, *aws_errors()) as exc:
        raise UserError(str(exc)) from exc
    emit(table, args.format, args.max_rows)
    return 0


def _run_local(args: argparse.Namespace, name: str, params: dict[str, str], sql: str):
    from pipelines.analytics.exports import export_queue
    from pipelines.analytics.runner import run_named_query

    ws = open_workspace(args)
    if not args.no_export and ws.cases_db.exists() and any(t in sql for t in _QUEUE_TABLES):
        export_queue(ws)  # the queue changes as cases are worked: query its current state
    return run_named_query(ws, name, params)


def _ddl(args: argparse.Namespace) -> int:
    from pipelines.data.lake.ddl import DEFAULT_PROJECTION_START, all_ddl

    start = args.projection_start or DEFAULT_PROJECTION_START
    for statement in all_ddl(args.database, args.lake_bucket, start).values():
        sys.stdout.write(statement + ";\n\n")
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    from pipelines.data.lake.ddl import DEFAULT_PROJECTION_START

    try:
        runner = _runner(args)
        ids = runner.create_tables(args.projection_start or DEFAULT_PROJECTION_START)
    except aws_errors() as exc:
        raise UserError(str(exc)) from exc
    for name, query_id in ids.items():
        print(f"{runner.target.database}.{name}: created or already present ({query_id})")
    return 0


def _create_named(args: argparse.Namespace) -> int:
    from pipelines.data.lake.named_queries import load_library

    try:
        outcome = _runner(args).sync_named_queries(load_library())
    except aws_errors() as exc:
        raise UserError(str(exc)) from exc
    for name, what in outcome.items():
        print(f"{name}: {what}")
    return 0


def parse_rls(items: list[str]):
    """``GROUP:FIELD`` or ``GROUP:FIELD=V1,V2`` -> ``RlsRule``s."""
    from pipelines.analytics.quicksight import RlsRule

    rules = []
    for item in items:
        group, sep, rest = item.partition(":")
        field, _, values = rest.partition("=")
        if not sep or not group or not field:
            raise UserError(f"--rls {item!r}: expected GROUP:FIELD or GROUP:FIELD=V1,V2, "
                            "e.g. ecommerce-analysts:channel=ecommerce")
        rules.append(RlsRule(group, field, tuple(v for v in values.split(",") if v)))
    return tuple(rules)


def _quicksight(args: argparse.Namespace) -> int:
    from pipelines.analytics.quicksight import QuickSightConfig, QuickSightDeployer
    from pipelines.analytics.runner import output_schema
    from pipelines.data.lake.athena_client import resolve_target
    from pipelines.data.lake.ddl import athena_tables
    from pipelines.data.lake.named_queries import load_library

    rules = parse_rls(args.rls)
    session = aws_session(args)
    try:
        target = resolve_target(session.client("cloudformation"), args.env, args.project)
        config = QuickSightConfig(
            account_id=session.client("sts").get_caller_identity()["Account"],
            workgroup=target.workgroup, database=target.database, owner_arn=args.owner_arn,
            viewer_group_arns=tuple(args.viewer_group_arn), rls_rules=rules,
            prefix=f"{args.project}-{args.env}", refresh_time=args.refresh_time,
            athena_role_arn=target.quicksight_role_arn,
        )
        deployer = QuickSightDeployer(session.client("quicksight"), config, session.region_name,
                                      load_library(), output_schema, set(athena_tables()))
        actions = deployer.deploy().actions
    except aws_errors() as exc:
        raise UserError(str(exc)) from exc
    for resource, action in actions.items():
        print(f"{resource}: {action}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pipelines.analytics.exports import export_queue

    summary = export_queue(open_workspace(args))
    print(f"exported {summary.alerts:,} alerts ({summary.partitions} day partitions) and "
          f"{summary.cases:,} cases; registered in the catalog: "
          f"{', '.join(summary.registered) or 'none'}")
    return 0
