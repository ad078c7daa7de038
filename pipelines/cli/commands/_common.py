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


def open_workspace(args: argparse.Namespace) -> Workspace:
    return Workspace.open(getattr(args, "workdir", None))
