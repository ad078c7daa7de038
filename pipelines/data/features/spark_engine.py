"""Scale-out engine: the same feature definitions as PySpark window expressions.

Runs unchanged on ``local[2]`` (file:// only; no s3a jars here) and on EMR (the
step in :mod:`pipelines.data.features.emr` ships this module with ``--py-files``).
Each :class:`~pipelines.data.features.definitions.Aggregate` becomes
``Window.partitionBy(entity).orderBy(ts_us).rangeBetween(-start, -end)``; each
:class:`~pipelines.data.features.definitions.Feature` is evaluated with ``F.expr``
from the very text DuckDB runs. Imports only engine-neutral modules, so an EMR
cluster needs neither DuckDB nor the rest of the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.core.schema import REQUIRED_COLUMNS
from pipelines.data.features import store
from pipelines.data.features.definitions import (
    AGGREGATES,
    DEFAULT_LABEL_DELAY_DAYS,
    FEATURE_COLUMNS,
    FEATURES,
    FULL_LAYOUT,
    ID_COLUMNS,
    LABEL_COLUMN,
    LABELS_COLUMNS,
    OPTIONAL_FEATURE_INPUTS,
    PARTITION_COLUMN,
    Aggregate,
    FeatureLayout,
    feature_set_manifest,
    label_delay_micros,
    layout_of,
)

# Optional inputs the features read; a missing one is treated as all-null.
OPTIONAL_INPUTS: dict[str, str] = {
    "channel": "string",
    "country": "string",
    "is_cash": "boolean",
    LABEL_COLUMN: "tinyint",
}
SESSION_CONF: dict[str, str] = {
    # Calendar features and ``dt`` are UTC whatever the machine's zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def configure_session(spark: SparkSession) -> SparkSession:
    """Settings the engine relies on; applied to any session (local or EMR)."""
    for key, value in SESSION_CONF.items():
        spark.conf.set(key, value)
    return spark


def local_session(master: str = "local[2]", shuffle_partitions: int = 4) -> SparkSession:
    """A loopback-only local session without UI (tests, ``--engine spark``)."""
    builder = (
        SparkSession.builder.master(master)
        .appName("fraudops-features")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    )
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    return configure_session(builder.getOrCreate())


# --- compilation -------------------------------------------------------------------
def window_spec(aggregate: Aggregate, delay_micros: int) -> Window:
    start, end = aggregate.frame_micros(delay_micros)
    lower = Window.unboundedPreceding if start is None else -start
    return Window.partitionBy(*aggregate.entity).orderBy("ts_us").rangeBetween(lower, -end)


def aggregate_column(aggregate: Aggregate) -> Column:
    """``count``/``sum``/``max`` with the definition's filter; sums of nothing are 0."""
    value = F.lit(1) if aggregate.function == "count" else F.expr(aggregate.value)
    if aggregate.filter:
        value = F.when(F.expr(aggregate.filter), value)
    if aggregate.function == "count":
        return F.count(value)
    if aggregate.function == "sum":
        return F.sum(value)
    return F.max(value)


def _windowed(base: DataFrame, delay_micros: int) -> DataFrame:
    columns = []
    for a in AGGREGATES:
        column = aggregate_column(a).over(window_spec(a, delay_micros))
        if a.function == "sum":
            column = F.coalesce(column, F.lit(0)).cast("double")
        columns.append(column.alias(a.name))
    return base.select("*", *columns)


def _late_label_corrections(base: DataFrame, delay_micros: int) -> list[tuple[DataFrame, list]]:
    """Per entity: what to subtract for labels not yet known at t (see the DuckDB engine)."""
    by_entity: dict[tuple[str, ...], list[Aggregate]] = {}
    for a in AGGREGATES:
        if a.labels_known_at_t:
            by_entity.setdefault(a.entity, []).append(a)
    corrections = []
    for entity, aggregates in by_entity.items():
        frames = [a.frame_micros(delay_micros) for a in aggregates]
        widest = max(start for start, _ in frames if start is not None)
        nearest = min(end for _, end in frames)
        late = base.where(F.col("label_known_us") > F.col("ts_us") + F.lit(delay_micros)).select(
            *[F.col(k).alias(f"late_{k}") for k in entity],
            F.col("ts_us").alias("late_ts_us"),
            F.col("label_known_us").alias("late_known_us"),
            *[F.expr(a.filter or "TRUE").alias(f"keep_{a.name}") for a in aggregates],
            *[F.expr(a.value).alias(f"value_{a.name}") for a in aggregates if a.value],
        )
        cur = base.select("transaction_id", *entity, "ts_us")
        condition = F.col("late_known_us") > F.col("ts_us")
        for k in entity:
            condition = condition & F.col(f"late_{k}").eqNullSafe(F.col(k))
        condition = condition & F.col("late_ts_us").between(
            F.col("ts_us") - widest, F.col("ts_us") - nearest
        )
        sums = []
        for a, (start, end) in zip(aggregates, frames, strict=True):
            keep = F.col(f"keep_{a.name}") & F.col("late_ts_us").between(
                F.col("ts_us") - start, F.col("ts_us") - end
            )
            value = F.lit(1) if a.function == "count" else F.col(f"value_{a.name}")
            agg = (
                F.count(F.when(keep, value))
                if a.function == "count"
                else F.sum(F.when(keep, value))
            )
            sums.append(agg.alias(f"correction_{a.name}"))
        table = cur.join(late, condition).groupBy("transaction_id").agg(*sums)
        corrections.append((table, [a.name for a in aggregates]))
    return corrections


def _base(transactions: DataFrame, labels: DataFrame | None, delay_micros: int) -> DataFrame:
    present = set(transactions.columns)
    absent = [c for c in REQUIRED_COLUMNS if c not in present]
    if absent:
        raise ValueError(f"transactions lack required column(s) {absent}")

    def column(name: str) -> Column:
        if name in present:
            return F.col(f"t.{name}")
        return F.lit(None).cast(OPTIONAL_INPUTS[name])

    frame = transactions.alias("t")
    timestamp = F.col("t.timestamp").cast("timestamp")
    curated_label = column(LABEL_COLUMN).cast("tinyint")
    label, known = curated_label, F.unix_micros(timestamp) + F.lit(delay_micros)
    if labels is not None:
        missing = [c for c in LABELS_COLUMNS if c not in labels.columns]
        if missing:
            raise ValueError(f"labels table lacks column(s) {missing}")
        frame = frame.join(
            labels.select(*LABELS_COLUMNS).alias("l"), on="transaction_id", how="left"
        )
        label = F.coalesce(F.col("l.is_fraud").cast("tinyint"), curated_label)
        known = F.coalesce(F.unix_micros(F.col("l.label_known_at").cast("timestamp")), known)
    return frame.select(
        F.col("transaction_id"),
        timestamp.alias("timestamp"),
        F.col("t.customer_id").alias("customer_id"),
        F.col("t.terminal_id").alias("terminal_id"),
        F.col("t.amount").cast("double").alias("amount"),
        column("channel").alias("channel"),
        column("country").alias("country"),
        column("is_cash").cast("boolean").alias("is_cash"),
        F.unix_micros(timestamp).alias("ts_us"),
        label.alias(LABEL_COLUMN),
        F.coalesce(label, F.lit(0)).cast("int").alias("fraud_label"),
        known.alias("label_known_us"),
    )


def curated_layout(transactions: DataFrame) -> FeatureLayout:
    """Which optional inputs have values and which user feature columns the data holds."""
    types = {field.name: field.dataType.simpleString() for field in transactions.schema.fields}
    present = [name for name in OPTIONAL_FEATURE_INPUTS if name in types]
    counts = transactions.select(*(F.count(F.col(n)) for n in present)).first() if present else ()
    return layout_of(types, [n for n, count in zip(present, counts, strict=True) if count])


def compute_features(
    transactions: DataFrame,
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    labels: DataFrame | None = None,
    layout: FeatureLayout = FULL_LAYOUT,
) -> DataFrame:
    """Point-in-time features for every transaction (same columns as the DuckDB engine);
    with a ``layout``, its left-out features are NULL and its user columns follow."""
    delay = label_delay_micros(label_delay_days)
    base = _base(transactions, labels, delay)
    frame = _windowed(base, delay)
    if labels is not None:
        for table, names in _late_label_corrections(base, delay):
            frame = frame.join(table, on="transaction_id", how="left")
            for name in names:
                correction = F.coalesce(F.col(f"correction_{name}"), F.lit(0))
                frame = frame.withColumn(name, F.col(name) - correction)
    for feature in FEATURES:
        # One at a time: later expressions may name earlier features.
        frame = frame.withColumn(feature.name, F.expr(feature.expression).cast("double"))
    for name in layout.left_out:
        frame = frame.withColumn(name, F.lit(None).cast("double"))
    if layout.user_features:
        user = transactions.select(
            "transaction_id",
            *(F.col(f"`{name}`").cast("double" if kind == "numeric" else "string").alias(name)
              for name, kind in layout.user_features),
        )
        frame = frame.join(user, on="transaction_id", how="left")
    return frame.select(
        *ID_COLUMNS,
        LABEL_COLUMN,
        F.date_format("timestamp", "yyyy-MM-dd").alias(PARTITION_COLUMN),
        *FEATURE_COLUMNS,
        *(F.col(f"`{name}`") for name, _ in layout.user_features),
        "ts_us",
    )


# --- the job -----------------------------------------------------------------------
def _read_parquet(spark: SparkSession, uri: str) -> DataFrame:
    # No partition discovery: curated files may carry ``dt`` in the data too,
    # and the engine derives ``dt`` from the timestamp anyway.
    return spark.read.option("recursiveFileLookup", "true").parquet(uri)


def write_manifest(
    output_uri: str, label_delay_days: int, layout: FeatureLayout = FULL_LAYOUT
) -> None:
    """``_feature_set.json`` next to the partitions, on S3 or a local path."""
    parsed = urlparse(output_uri)
    if parsed.scheme == "s3":
        import boto3  # available on EMR; only needed for S3 outputs

        key = f"{parsed.path.strip('/')}/{store.MANIFEST_NAME}".lstrip("/")
        body = json.dumps(feature_set_manifest(label_delay_days, layout), indent=2).encode()
        boto3.client("s3").put_object(Bucket=parsed.netloc, Key=key, Body=body)
        return
    store.write_manifest(
        Path(parsed.path if parsed.scheme == "file" else output_uri), label_delay_days, layout
    )


def run_feature_job(
    spark: SparkSession,
    input_uri: str,
    output_uri: str,
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
    labels_uri: str | None = None,
) -> dict[str, object]:
    """Read curated Parquet, compute features, write ``dt=`` partitions + manifest."""
    configure_session(spark)
    transactions = _read_parquet(spark, input_uri)
    labels = _read_parquet(spark, labels_uri) if labels_uri else None
    layout = curated_layout(transactions)
    features = compute_features(transactions, label_delay_days, labels, layout)
    (
        # One task per day: one file per dt partition rather than one per task and day.
        features.repartition(PARTITION_COLUMN)
        .drop("ts_us")
        .write.mode("overwrite")
        .partitionBy(PARTITION_COLUMN)
        .parquet(output_uri)
    )
    write_manifest(output_uri, label_delay_days, layout)
    return {
        "input": input_uri,
        "output": output_uri,
        "label_delay_days": label_delay_days,
        "features": len(layout.feature_columns),
        "inputs": sorted(layout.inputs),
        "user_features": dict(layout.user_features),
        "left_out_groups": layout.left_out_groups(),
    }
