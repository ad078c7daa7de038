"""EMR step entry: compute the feature table with Spark from curated Parquet.

Thin on purpose: all logic lives in ``pipelines.data.features.spark_engine``, shipped
next to this file with ``spark-submit --py-files`` (see ``pipelines.data.features.emr``).

    spark-submit --py-files fraudops_features.zip feature_job.py \\
        --input s3://lake/curated/transactions --output s3://lake/features/transactions

Locally (no s3a jars here): ``--input file:///... --output file:///... --master local[2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="feature_job.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="curated transactions (s3:// or file://)")
    parser.add_argument("--output", required=True, help="feature table location")
    # Required, no default of its own: the caller (pipelines.data.features.emr) passes the
    # delay the feature build was asked for.
    parser.add_argument("--label-delay-days", type=int, required=True)
    parser.add_argument("--labels", default=None, help="optional late labels (Parquet)")
    parser.add_argument(
        "--master", default=None, help="Spark master for local runs (EMR provides its own)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after argument parsing so `--help` works without pyspark.
    from pyspark.sql import SparkSession

    from pipelines.data.features import spark_engine

    if args.master:
        spark = spark_engine.local_session(args.master)
    else:
        spark = SparkSession.builder.appName("fraudops-features").getOrCreate()
    summary = spark_engine.run_feature_job(
        spark, args.input, args.output, args.label_delay_days, labels_uri=args.labels
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
