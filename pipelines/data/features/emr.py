"""Run the Spark feature job on EMR: package the code, build the job, submit it.

Two shapes of one job (:func:`job_arguments`): an EMR on EC2 step,
``command-runner.jar spark-submit --py-files <zip> feature_job.py``
(:func:`feature_step`), and the EMR Serverless job driver the workflow's
feature task runs (:func:`serverless_job_driver`). The zip holds exactly the
engine-neutral modules the job imports (the feature definitions, the Spark
engine, the schema), so EMR runs the same code that
``fraudops features --engine spark`` runs locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.core.archive import write_zip
from pipelines.core.code import import_root
from pipelines.data.features.definitions import DEFAULT_LABEL_DELAY_DAYS, label_delay_micros

# What the job imports, relative to the repository root; nothing else is shipped.
PACKAGE_MODULES: tuple[str, ...] = (
    "pipelines/__init__.py",
    "pipelines/core/__init__.py",
    "pipelines/core/fileio.py",
    "pipelines/core/params.py",
    "pipelines/core/schema.py",
    "pipelines/data/__init__.py",
    "pipelines/data/features/__init__.py",
    "pipelines/data/features/definitions.py",
    "pipelines/data/features/spark_engine.py",
    "pipelines/data/features/store.py",
)
ENTRY_POINT = "companions/emr/feature_job.py"
ARCHIVE_NAME = "fraudops_features.zip"
STEP_NAME = "fraudops-features"
SPARK_CONF = "spark.sql.session.timeZone=UTC"
_PLACEHOLDER = re.compile(r"\$\{\w+\}")


@dataclass(frozen=True)
class JobCode:
    """Where the step finds its code on S3."""

    py_files_uri: str
    entry_uri: str


def _require_s3(uri: str, what: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{what} must be an s3://bucket/key URI for EMR, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def build_job_archive(destination: Path, root: Path | None = None) -> Path:
    """Write the ``--py-files`` zip of :data:`PACKAGE_MODULES` into ``destination``."""
    root = root or import_root()
    # Reproducible: identical code gives a byte-identical archive.
    return write_zip(destination / ARCHIVE_NAME,
                     {relative: root / relative for relative in PACKAGE_MODULES})


def upload_job_code(s3_client: Any, code_uri: str, workdir: Path) -> JobCode:
    """Build the archive and upload it with the entry script under ``code_uri``."""
    bucket, prefix = _require_s3(code_uri, "code location")
    archive = build_job_archive(workdir)
    keys = {
        "archive": f"{prefix}/{ARCHIVE_NAME}".lstrip("/"),
        "entry": f"{prefix}/{Path(ENTRY_POINT).name}".lstrip("/"),
    }
    s3_client.upload_file(str(archive), bucket, keys["archive"])
    s3_client.upload_file(str(import_root() / ENTRY_POINT), bucket, keys["entry"])
    return JobCode(f"s3://{bucket}/{keys['archive']}", f"s3://{bucket}/{keys['entry']}")


def job_arguments(
    input_uri: str,
    output_uri: str,
    label_delay_days: int | str = DEFAULT_LABEL_DELAY_DAYS,
    labels_uri: str | None = None,
) -> list[str]:
    """``feature_job.py``'s arguments for one feature build.

    ``label_delay_days`` is a whole number of days, or a ``${Name}`` placeholder a
    template fills at deploy time (the workflow's ``LabelDelayDays`` parameter).
    """
    if not (isinstance(label_delay_days, str) and _PLACEHOLDER.fullmatch(label_delay_days)):
        label_delay_micros(label_delay_days)  # type: ignore[arg-type]
    _require_s3(input_uri, "--input")
    _require_s3(output_uri, "--output")
    args = ["--input", input_uri, "--output", output_uri,
            "--label-delay-days", str(label_delay_days)]
    if labels_uri:
        _require_s3(labels_uri, "--labels")
        args += ["--labels", labels_uri]
    return args


def feature_step(
    code: JobCode,
    input_uri: str,
    output_uri: str,
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    labels_uri: str | None = None,
    name: str = STEP_NAME,
    action_on_failure: str = "CONTINUE",
) -> dict[str, Any]:
    """The ``Steps`` entry of ``add_job_flow_steps`` for one feature build (EMR on EC2)."""
    args = [
        "spark-submit", "--deploy-mode", "cluster", "--conf", SPARK_CONF,
        "--py-files", code.py_files_uri, code.entry_uri,
        *job_arguments(input_uri, output_uri, label_delay_days, labels_uri),
    ]
    return {
        "Name": name,
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args},
    }


def serverless_job_driver(
    code: JobCode,
    input_uri: str,
    output_uri: str,
    label_delay_days: int | str = DEFAULT_LABEL_DELAY_DAYS,
    labels_uri: str | None = None,
) -> dict[str, Any]:
    """The ``JobDriver`` of an EMR Serverless ``StartJobRun`` for one feature build."""
    return {
        "SparkSubmit": {
            "EntryPoint": code.entry_uri,
            "EntryPointArguments": job_arguments(input_uri, output_uri, label_delay_days,
                                                 labels_uri),
            "SparkSubmitParameters": f"--conf {SPARK_CONF} --py-files {code.py_files_uri}",
        }
    }


def submit_feature_step(emr_client: Any, cluster_id: str, step: dict[str, Any]) -> str:
    """Add the step to a running cluster; return its step id."""
    response = emr_client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])
    step_ids = response.get("StepIds") or []
    if not step_ids:
        raise RuntimeError(f"EMR cluster {cluster_id} accepted no step: {response!r}")
    return step_ids[0]
