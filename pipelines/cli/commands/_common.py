"""Arguments and errors shared by every ``fraudops`` subcommand."""

from __future__ import annotations

import argparse

from pipelines.core.workspace import Workspace


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def add_workdir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        default=None,
        help="workspace directory holding all local state "
        "(default: $FRAUDOPS_HOME or ./.fraudops)",
    )


def iso_instant(flag: str):  # -> Callable[[str], datetime], the argparse type of ``flag``
    """Parse a flag's ISO-8601 instant (``Z``, an offset, or none meaning UTC)."""

    def parse(text: str):  # -> datetime; argparse calls it on the flag's value
        from pipelines.data.ingest import IngestError
        from pipelines.data.ingest.columns import parse_time_origin

        try:
            return parse_time_origin(text, flag)
        except IngestError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from exc

    return parse


def add_time_origin_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--time-origin`` and ``--time-unit``: numeric times count units from this instant
    (ingest, run, stream)."""
    from pipelines.data.ingest.columns import TIME_UNITS

    parser.add_argument(
        "--time-origin", metavar="ISO8601", default=None, type=iso_instant("--time-origin"),
        help="numeric times count --time-unit from this instant (e.g. 2013-09-01T00:00:00Z) "
        "instead of being epoch seconds; also \"time_origin\" in the column map file",
    )
    # Default None, not "seconds": a unit given without an origin is refused, not ignored.
    parser.add_argument(
        "--time-unit", choices=tuple(TIME_UNITS), default=None,
        help="what numeric times count from --time-origin (default seconds; e.g. hours for "
        "PaySim's step); also \"time_unit\" in the column map file",
    )


def open_workspace(args: argparse.Namespace) -> Workspace:
    return Workspace.open(getattr(args, "workdir", None))


def add_aws_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--env``, ``--project``, ``--region``: which deployed stacks a command talks to."""
    parser.add_argument("--env", required=required, choices=("dev", "staging", "prod"),
                        help="environment whose stacks hold the database, workgroup and buckets")
    parser.add_argument("--project", default="fraudops")
    parser.add_argument("--region", default=None)


def aws_session(args: argparse.Namespace):  # -> boto3.Session (boto3 imported on use)
    """A boto3 session in ``--region`` (or the default); a clear error without a region."""
    import boto3

    session = boto3.Session(region_name=args.region)
    if session.region_name is None:
        raise UserError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    return session


def aws_errors() -> tuple[type[Exception], ...]:
    """AWS failures (credentials, permissions, throttling) as errors the user can act on."""
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.data.lake.athena_client import AthenaQueryError

    return (AthenaQueryError, BotoCoreError, ClientError)


def athena_target(args: argparse.Namespace, session):  # -> AthenaTarget
    """The environment's database, workgroup and buckets, from its stack exports."""
    from pipelines.data.lake.athena_client import resolve_target

    if not args.env:
        raise UserError("--backend aws needs --env (dev, staging or prod)")
    return resolve_target(session.client("cloudformation"), args.env, args.project)


def records_bucket(args: argparse.Namespace, session):  # -> RecordsBucket
    """The environment's Object-Lock records bucket, locked for the workspace's retention."""
    from pipelines.compliance.records_bucket import RecordsBucket

    name = athena_target(args, session).records_bucket
    if not name:
        raise UserError(f"CloudFormation export {args.project}-{args.env}-RecordsBucket not "
                        "found: deploy the storage stack first (`fraudops infra deploy`)")
    return RecordsBucket.for_workspace(session.client("s3"), name, open_workspace(args))
