"""``get-pipeline-definition``: print or write a pipeline's definition JSON.

Compatible with the SageMaker MLOps project template's command::

    get-pipeline-definition --module-name pipelines.fraud.pipeline \\
        --kwargs '{"region": "us-east-1"}' --file-name pipeline.json

It needs no AWS credentials and no network: the pipeline is built under
moto (see ``pipelines.fraud.definition``), with local-backend defaults for
anything ``--kwargs`` leaves out. ``--code-store DIR`` also copies the code
the definition references into ``DIR/<bucket>/<key>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.cli.arguments import add_pipeline_module_arguments, configure_cli_logging
from pipelines.core.fileio import write_text_atomically
from pipelines.fraud.modules import (
    ArgumentError,
    convert_kwargs,
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="get-pipeline-definition",
        description="Gets the pipeline definition for the pipeline script (offline).",
    )
    add_pipeline_module_arguments(parser)
    parser.add_argument(
        "-f", "--file-name", dest="file_name", default=None,
        help="write the definition JSON to this file instead of stdout",
    )  # fmt: skip
    parser.add_argument(
        "--code-store", dest="code_store", default=None, type=Path,
        help="also copy the code the definition references to DIR/<bucket>/<key>",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show the SageMaker SDK's notices"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli_logging(args.verbose)
    try:
        kwargs = convert_kwargs(args.kwargs)
        from pipelines.fraud.definition import render_definition

        content = render_definition(
            kwargs, code_store_dir=args.code_store, module_name=args.module_name
        )
    except ArgumentError as exc:
        print(f"get-pipeline-definition: error: {exc}", file=sys.stderr)
        return 2
    if args.file_name:
        write_text_atomically(Path(args.file_name), content)
        print(f"wrote the definition of {args.module_name} to {args.file_name}", file=sys.stderr)
    else:
        print(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
