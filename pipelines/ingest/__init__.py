"""Ingestion (the Glue ETL job's logic): validate, quarantine, dedupe, tokenise, partition.

Public entry points:

- ``ingest(ws, paths, column_map, fmt)``: local run over the workspace, records
  the reconciliation in the catalog (``fraudops ingest``).
- ``run_ingestion(layout, paths, tokeniser, ...)``: the same engine on any
  ``pyarrow.fs`` filesystem (the Glue job uses S3).
"""

from pipelines.ingest.columns import load_column_map
from pipelines.ingest.errors import IngestError
from pipelines.ingest.layout import LakeLayout
from pipelines.ingest.reconcile import IngestReport, render
from pipelines.ingest.run import ingest, run_ingestion
from pipelines.ingest.tokenise import Tokeniser, load_key

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
