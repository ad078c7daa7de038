"""Point-in-time transaction features: one definition, a DuckDB and a Spark engine.

* ``definitions``: the feature set as data (``FEATURE_COLUMNS``, ``FEATURE_SET_VERSION``).
* ``duckdb_engine``: single node; ``compute_features(con_or_table, ...)``.
* ``spark_engine``: the same definitions as PySpark windows (local or EMR).
* ``build``: ``build_feature_table(ws, ...)`` curated zone -> feature zone.
* ``emr``: package the Spark job and submit it as an EMR step.

Engine imports are lazy so the Spark job shipped to EMR never needs DuckDB.
"""

from __future__ import annotations

from typing import Any

from pipelines.data.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION

__all__ = ["FEATURE_COLUMNS", "FEATURE_SET_VERSION", "build_feature_table", "compute_features"]


def __getattr__(name: str) -> Any:
    if name == "compute_features":
        from pipelines.data.features.duckdb_engine import compute_features

        return compute_features
    if name == "build_feature_table":
        from pipelines.data.features.build import build_feature_table

        return build_feature_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
