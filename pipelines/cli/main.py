"""``fraudops``: the command line of the local and AWS backends.

Each subcommand lives in its own module under ``pipelines.cli.commands`` and
exposes ``register(subparsers)``; modules are discovered, so adding a
command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from pipelines import __version__
from pipelines.cli import commands
from pipelines.compliance.audit import AuditError
from pipelines.core.stores import DamagedStoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudops",
        description="Fraud detection and compliance workflow (local and AWS backends).",
    )
    parser.add_argument("--version", action="version", version=f"fraudops {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (commands.UserError, DamagedStoreError) as exc:
        print(f"fraudops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except AuditError as exc:  # fail closed: nothing is done on top of a trail that is not intact
        print(f"fraudops {args.command}: audit trail: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
