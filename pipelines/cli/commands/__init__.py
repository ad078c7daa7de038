"""Subcommands of ``fraudops``; each module exposes ``register(subparsers)``.

Helpers shared by every command live in ``_common``.
"""

from pipelines.cli.commands._common import UserError, add_workdir_argument

__all__ = ["UserError", "add_workdir_argument"]
