"""Command-line plumbing shared by ``run-pipeline`` and ``get-pipeline-definition``."""

from __future__ import annotations

import argparse
import logging
import warnings

_SDK_LOGGERS = ("sagemaker", "botocore", "boto3", "moto")


def _not_sdk_chatter(record: logging.LogRecord) -> bool:
    """Keep our messages and SDK errors; drop the SDK's expected INFO/WARNING lines."""
    return record.levelno >= logging.ERROR or not record.name.startswith(_SDK_LOGGERS)


def configure_cli_logging(verbose: bool = False) -> None:
    """Log to stderr; unless ``verbose``, hide the SDK's routine notices.

    Building a definition makes SDK v3 log a dozen expected notices (job
    names dropped from the definition, telemetry opt-out applied...).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_sdk_chatter)
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")


def add_pipeline_module_arguments(parser: argparse.ArgumentParser) -> None:
    """``--module-name`` and ``--kwargs``, as the SageMaker project template spells them."""
    parser.add_argument(
        "-n", "--module-name", dest="module_name", default="pipelines.fraud.pipeline",
        help="module whose get_pipeline(...) builds the pipeline (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "-kwargs", "--kwargs", dest="kwargs", default=None,
        help="JSON object of keyword arguments for get_pipeline",
    )  # fmt: skip
