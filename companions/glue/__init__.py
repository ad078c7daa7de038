"""AWS Glue job entry points; the logic lives in ``pipelines.data.ingest``."""
