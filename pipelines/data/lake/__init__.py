"""The local lake's catalog and SQL: DuckDB views over the Parquet zones (Athena's stand-in)."""

from pipelines.data.lake.catalog import refresh_catalog, register_table
from pipelines.data.lake.query import QueryError, run_query

__all__ = ["QueryError", "refresh_catalog", "register_table", "run_query"]
