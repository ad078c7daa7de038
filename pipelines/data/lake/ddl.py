"""Athena ``CREATE EXTERNAL TABLE`` statements generated from the Arrow schemas in code.

No column list is kept here: each table's columns come from the schema its
writer uses (``CURATED_SCHEMA``, ``QUARANTINE_SCHEMA``, the feature job's
``output_schema()``, ``SCORED_SCHEMA``, the alert/case export schemas,
``LABEL_SCHEMA``), and its location from the workspace layout (the same key
under the lake bucket locally and on S3). Day-partitioned tables use partition
projection on ``dt`` (type date, format yyyy-MM-dd), so new days are queryable
without ``MSCK REPAIR`` or crawlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipelines.core.schema import CURATED_SCHEMA, PARTITION_COLUMN, QUARANTINE_SCHEMA
from pipelines.core.workspace import Workspace
from pipelines.data.features.duckdb_engine import output_schema as feature_schema
from pipelines.data.labels import LABEL_SCHEMA
from pipelines.data.lake.tables import (
    ALERTS_SCHEMA,
    CASES_SCHEMA,
    SCORED_SCHEMA,
    alerts_dir,
    cases_dir,
)

DEFAULT_PROJECTION_START = "2020-01-01"
_LAYOUT = Workspace(Path("/layout"))  # only used to read zone paths relative to the lake


class DdlError(ValueError):
    """A schema holds a type Athena tables cannot declare; the message names the column."""


@dataclass(frozen=True)
class TableSpec:
    """One Athena table: its name, Arrow schema, key prefix in the lake, partitioning."""

    name: str
    schema: pa.Schema
    prefix: str  # key under the lake bucket, no leading or trailing slash
    partitioned: bool = True

    @property
    def data_columns(self) -> list[pa.Field]:
        """Columns stored in the files (the partition column comes from the path)."""
        return [f for f in self.schema if not (self.partitioned and f.name == PARTITION_COLUMN)]


def _prefix(path: Path) -> str:
    return path.relative_to(_LAYOUT.lake).as_posix()


def _with_partition(schema: pa.Schema) -> pa.Schema:
    if PARTITION_COLUMN in schema.names:
        return schema
    return schema.append(pa.field(PARTITION_COLUMN, pa.string(), nullable=False))


def athena_tables() -> dict[str, TableSpec]:
    """Every lake table Athena (and the local catalog) exposes, by name."""
    specs = [
        TableSpec("transactions", CURATED_SCHEMA, _prefix(_LAYOUT.curated)),
        TableSpec("quarantine", QUARANTINE_SCHEMA, _prefix(_LAYOUT.quarantine)),
        TableSpec("features", feature_schema(), _prefix(_LAYOUT.features)),
        TableSpec("scored", _with_partition(SCORED_SCHEMA), _prefix(_LAYOUT.scored)),
        TableSpec("labels", _with_partition(LABEL_SCHEMA), _prefix(_LAYOUT.labels)),
        TableSpec("alerts", ALERTS_SCHEMA, _prefix(alerts_dir(_LAYOUT))),
        TableSpec("cases", CASES_SCHEMA, _prefix(cases_dir(_LAYOUT)), partitioned=False),
    ]
    return {spec.name: spec for spec in specs}


def hive_type(data_type: pa.DataType, column: str) -> str:
    """The Athena (Hive DDL) type of an Arrow type."""
    simple = {
        pa.string(): "string",
        pa.large_string(): "string",
        pa.bool_(): "boolean",
        pa.int8(): "tinyint",
        pa.int16(): "smallint",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.date32(): "date",
    }
    if data_type in simple:
        return simple[data_type]
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_decimal(data_type):
        return f"decimal({data_type.precision},{data_type.scale})"
    raise DdlError(f"column {column!r} has Arrow type {data_type}, which has no Athena type here")


def table_location(spec: TableSpec, lake_bucket: str) -> str:
    return f"s3://{lake_bucket}/{spec.prefix}/"


def create_table_ddl(
    spec: TableSpec,
    database: str,
    lake_bucket: str,
    projection_start: str = DEFAULT_PROJECTION_START,
) -> str:
    """``CREATE EXTERNAL TABLE IF NOT EXISTS`` for one table, with ``dt`` partition projection."""
    columns = ",\n".join(
        f"  `{field.name}` {hive_type(field.type, field.name)}" for field in spec.data_columns
    )
    location = table_location(spec, lake_bucket)
    lines = [f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{spec.name}` (", columns, ")"]
    if spec.partitioned:
        lines.append(f"PARTITIONED BY (`{PARTITION_COLUMN}` string)")
    lines += ["STORED AS PARQUET", f"LOCATION '{location}'"]
    properties = {"parquet.compression": "SNAPPY"}
    if spec.partitioned:
        properties.update(projection_properties(location, projection_start))
    lines.append(
        "TBLPROPERTIES (\n"
        + ",\n".join(f"  '{key}'='{value}'" for key, value in properties.items())
        + "\n)"
    )
    return "\n".join(lines)


def projection_properties(location: str, projection_start: str) -> dict[str, str]:
    """Partition projection on ``dt``: every day from ``projection_start`` up to today."""
    return {
        "projection.enabled": "true",
        f"projection.{PARTITION_COLUMN}.type": "date",
        f"projection.{PARTITION_COLUMN}.range": f"{projection_start},NOW",
        f"projection.{PARTITION_COLUMN}.format": "yyyy-MM-dd",
        f"projection.{PARTITION_COLUMN}.interval": "1",
        f"projection.{PARTITION_COLUMN}.interval.unit": "DAYS",
        "storage.location.template": f"{location}{PARTITION_COLUMN}=${{{PARTITION_COLUMN}}}/",
    }


def all_ddl(
    database: str, lake_bucket: str, projection_start: str = DEFAULT_PROJECTION_START
) -> dict[str, str]:
    """DDL of every table, by table name."""
    return {
        name: create_table_ddl(spec, database, lake_bucket, projection_start)
        for name, spec in athena_tables().items()
    }
