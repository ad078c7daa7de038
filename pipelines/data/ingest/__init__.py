"""Ingestion (the Glue ETL job's logic): validate, quarantine, dedupe, tokenise, partition.

Public entry points:

- ``ingest(ws, paths, column_map, fmt)``: local run over the workspace, records
  the reconciliation in the catalog (``fraudops ingest``).
- ``run_ingestion(layout, paths, tokeniser, ...)``: the same engine on any
  ``pyarrow.fs`` filesystem (the Glue job uses S3).
"""

from pipelines.data.ingest.columns import load_column_map
from pipelines.data.ingest.errors import IngestError
from pipelines.data.ingest.layout import LakeLayout
from pipelines.data.ingest.reconcile import IngestReport, render
from pipelines.data.ingest.run import ingest, run_ingestion
from pipelines.data.ingest.tokenise import Tokeniser, load_key

__all__ = [
    "IngestError",
    "IngestReport",
    "LakeLayout",
    "Tokeniser",
    "ingest",
    "load_column_map",
    "load_key",
    "render",
    "run_ingestion",
]
