"""AWS Glue job: the transactions ETL, a thin shell over ``pipelines.data.ingest``.

Glue runs this script with job arguments such as::

    --JOB_NAME fraudops-dev-transactions-etl
    --landing_uri s3://landing-bucket/transactions/
    --lake_uri s3://lake-bucket/
    --token_key_secret fraudops/dev/card-tokenisation-key
    [--column_map_uri s3://.../column_map.json] [--format auto|csv|jsonl|parquet]
    [--time_origin 2013-09-01T00:00:00Z (numeric times count seconds from it)]
    [--time_unit seconds|minutes|hours|days (what they count instead; needs an origin)]
    [--state_uri s3://lake-bucket/_state/ingest] [--logs_uri s3://lake-bucket/_logs/ingest]
    [--glue_database fraudops_dev] [--endpoint_url http://127.0.0.1:5000 (tests, LocalStack)]

and ``--extra-py-files`` carrying the ``fraudops`` wheel. Arguments are parsed
like ``awsglue.utils.getResolvedOptions`` (``--name value`` or ``--name=value``,
unknown Glue-internal arguments ignored); hyphenated names (``--lake-uri``) are
accepted as their underscore form. The job reads and writes S3 through
``pyarrow.fs.S3FileSystem`` and calls the same ``run_ingestion`` the local
``fraudops ingest`` uses, so validation, tokenisation, de-duplication and the
crash-safe publish are identical. New ``dt`` partitions are added to the Glue
tables when ``--glue_database`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipelines.data.ingest import IngestError, LakeLayout, Tokeniser, run_ingestion
from pipelines.data.ingest.columns import (
    ColumnMap,
    check_column_map,
    parse_time_origin,
    parse_time_unit,
)
from pipelines.data.ingest.tokenise import KEY_ENV, key_from_text

REQUIRED = ("JOB_NAME", "landing_uri", "lake_uri")
OPTIONAL = (
    "token_key_secret", "column_map_uri", "format", "time_origin", "time_unit", "state_uri",
    "logs_uri", "glue_database", "endpoint_url", "region",
)
# Glue table name -> (zone in the run report, lake prefix relative to --lake_uri).
GLUE_TABLES = {
    "transactions": ("curated", "curated/transactions"),
    "quarantine": ("quarantine", "quarantine/transactions"),
}


def get_resolved_options(
    argv: Sequence[str], required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, str]:
    """Resolve ``--name value`` job arguments like ``awsglue.utils.getResolvedOptions``.

    Required names missing from ``argv`` exit with a usage error (as Glue's does);
    optional names are returned only when given; other arguments are ignored.
    """
    parser = argparse.ArgumentParser(prog="transactions_etl", add_help=False)
    for name in required:
        parser.add_argument(f"--{name}", required=True)
    for name in optional:
        parser.add_argument(f"--{name}", default=None)
    normalised = [_underscore(arg) for arg in argv]
    known, _ = parser.parse_known_args(normalised)
    return {k: v for k, v in vars(known).items() if v is not None}


def _underscore(arg: str) -> str:
    """``--lake-uri=x`` -> ``--lake_uri=x``; values and single-dash args are left alone."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg[2:].partition("=")
    return f"--{name.replace('-', '_')}{sep}{value}"


def s3_path(uri: str) -> str:
    """``s3://bucket/key/`` -> ``bucket/key`` (pyarrow's S3 path form)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise IngestError(f"{uri!r} is not an s3://bucket/prefix URI")
    return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")


def s3_filesystem(options: dict[str, str]) -> pafs.S3FileSystem:
    endpoint = options.get("endpoint_url")
    region = options.get("region") or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION", "us-east-1")
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    parsed = urlparse(endpoint)
    return pafs.S3FileSystem(
        region=region, endpoint_override=parsed.netloc, scheme=parsed.scheme or "https",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )


def load_tokeniser(options: dict[str, str], session=None) -> Tokeniser:
    """Key from Secrets Manager (``--token_key_secret``), else ``$FRAUDOPS_TOKEN_KEY``."""
    secret_id = options.get("token_key_secret")
    if secret_id:
        client = _boto3_client("secretsmanager", options, session)
        value = client.get_secret_value(SecretId=secret_id)["SecretString"]
        return Tokeniser(key_from_text(value, f"secret {secret_id}"))
    if os.environ.get(KEY_ENV):
        return Tokeniser(key_from_text(os.environ[KEY_ENV], f"${KEY_ENV}"))
    raise IngestError(f"no token key: pass --token_key_secret SECRET_ID or set ${KEY_ENV}")


def _boto3_client(service: str, options: dict[str, str], session=None):
    import boto3

    session = session or boto3.session.Session()
    return session.client(service, endpoint_url=options.get("endpoint_url"),
                          region_name=options.get("region"))


def load_column_map(fs: pafs.FileSystem, uri: str | None) -> ColumnMap:
    if not uri:
        return ColumnMap()
    with fs.open_input_stream(s3_path(uri)) as stream:
        return check_column_map(json.loads(stream.read()), origin=uri)


def register_partitions(
    glue, database: str, lake_uri: str, partitions: dict[str, list[str]]
) -> list[str]:
    """Add a run's new ``dt=`` partitions to the Glue tables; existing ones are left alone."""
    messages = []
    for table, (zone, prefix) in GLUE_TABLES.items():
        days = [p.split("=", 1)[1] for p in partitions.get(zone, [])]
        if not days:
            continue
        try:
            descriptor = glue.get_table(DatabaseName=database, Name=table)["Table"][
                "StorageDescriptor"]
        except glue.exceptions.EntityNotFoundException:
            messages.append(f"Glue table {database}.{table} does not exist; partitions not added")
            continue
        inputs = [
            {"Values": [day], "StorageDescriptor": {
                **descriptor, "Location": f"{lake_uri.rstrip('/')}/{prefix}/dt={day}/"}}
            for day in days
        ]
        response = glue.batch_create_partition(
            DatabaseName=database, TableName=table, PartitionInputList=inputs
        )
        failed = [e for e in response.get("Errors", [])
                  if e["ErrorDetail"]["ErrorCode"] != "AlreadyExistsException"]
        messages.append(f"{table}: {len(inputs) - len(failed)} partition(s) registered")
        messages += [f"{table}: {e['PartitionValues']}: {e['ErrorDetail']}" for e in failed]
    return messages


def main(argv: Sequence[str] | None = None, session=None) -> int:
    options = get_resolved_options(list(sys.argv if argv is None else argv), REQUIRED, OPTIONAL)
    fs = s3_filesystem(options)
    lake = s3_path(options["lake_uri"])
    layout = LakeLayout.for_s3(
        fs,
        lake=lake,
        state=s3_path(options["state_uri"]) if "state_uri" in options else f"{lake}/_state/ingest",
        logs=s3_path(options["logs_uri"]) if "logs_uri" in options else f"{lake}/_logs/ingest",
    )
    try:
        report = run_ingestion(
            layout,
            [s3_path(uri) for uri in options["landing_uri"].split(",")],
            load_tokeniser(options, session),
            column_map=load_column_map(fs, options.get("column_map_uri")),
            fmt=options.get("format", "auto"),
            time_origin=(parse_time_origin(options["time_origin"], "--time_origin")
                         if options.get("time_origin") else None),
            time_unit=(parse_time_unit(options["time_unit"], "--time_unit")
                       if options.get("time_unit") else None),
        )
    except IngestError as exc:
        print(f"{options['JOB_NAME']}: error: {exc}", file=sys.stderr)
        return 2
    # Glue keeps stdout in CloudWatch: the reconciliation (counts only) is the job's record.
    print(json.dumps(report.to_dict(), sort_keys=True))
    if options.get("glue_database"):
        glue = _boto3_client("glue", options, session)
        for message in register_partitions(glue, options["glue_database"],
                                           options["lake_uri"], report.partitions):
            print(message)
    return 0 if report.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
