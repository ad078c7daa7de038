"""Layer 3: data in the lake. Synthetic landing drops (``datagen``), the Glue-style ingest job
(``ingest``), the lake catalog with its DuckDB/Athena SQL and named queries (``lake``), labels and
the point-in-time features (``features``). Imports ``core`` and ``compliance``.
"""
