"""The persistent set of transaction ids (and quarantined rows) already ingested.

One Parquet file per committed run under ``<state>/ledger/<ingestion_id>.parquet``
with columns ``kind`` (``transaction`` | ``quarantine`` | ``run``) and ``key``.
Committing a run is a single atomic rename of that file, and it happens only
after the run's data files are in place: no id is ever marked seen for data
that was not written. Reading a million ids is one columnar scan.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

KIND_TRANSACTION = "transaction"
KIND_QUARANTINE = "quarantine"
KIND_RUN = "run"
LEDGER_SCHEMA = pa.schema([pa.field("kind", pa.string()), pa.field("key", pa.string())])


class Ledger:
    """Seen ids, stored as one immutable Parquet file per committed ingestion run."""

    def __init__(self, fs: pafs.FileSystem, state_dir: str) -> None:
        self.fs = fs
        self.root = f"{state_dir.rstrip('/')}/ledger"

    def _table(self, kind: str) -> pa.Table:
        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.Directory:
            return LEDGER_SCHEMA.empty_table()
        # Temporary files start with "_" and are skipped by the dataset's default prefixes.
        dataset = ds.dataset(self.root, filesystem=self.fs, format="parquet", schema=LEDGER_SCHEMA)
        return dataset.to_table(columns=["key"], filter=pc.field("kind") == kind)

    def seen_transaction_ids(self) -> pa.Table:
        """A one-column table ``key`` of every transaction id committed so far."""
        return self._table(KIND_TRANSACTION)

    def seen_quarantine_keys(self) -> pa.Table:
        """Fingerprints of rows quarantined by earlier runs (to keep re-ingestion idempotent)."""
        return self._table(KIND_QUARANTINE)

    def is_committed(self, ingestion_id: str) -> bool:
        path = self.committed_path(ingestion_id)
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def committed_path(self, ingestion_id: str) -> str:
        """The run's ledger file: it exists exactly when the run has committed."""
        return f"{self.root}/{ingestion_id}.parquet"

    def commit(
        self,
        ingestion_id: str,
        transaction_ids: pa.Array | pa.ChunkedArray,
        quarantine_keys: Sequence[str] | pa.Array,
    ) -> None:
        """Atomically record a run's ids: write a temporary file, then rename it into place."""
        ids = pa.chunked_array([transaction_ids]) if isinstance(transaction_ids, pa.Array) \
            else transaction_ids
        quarantine = pa.array(quarantine_keys, pa.string())
        table = pa.concat_tables(
            [
                pa.table({"kind": pa.repeat(KIND_RUN, 1), "key": pa.array([ingestion_id])},
                         schema=LEDGER_SCHEMA),
                _kind_table(KIND_TRANSACTION, ids),
                _kind_table(KIND_QUARANTINE, pa.chunked_array([quarantine])),
            ]
        )
        self.fs.create_dir(self.root, recursive=True)
        temporary = f"{self.root}/_tmp-{ingestion_id}-{uuid.uuid4().hex[:8]}.parquet"
        pq.write_table(table, temporary, filesystem=self.fs, compression="zstd")
        self.fs.move(temporary, self.committed_path(ingestion_id))


def _kind_table(kind: str, keys: pa.ChunkedArray) -> pa.Table:
    keys = keys.cast(pa.string())
    kinds = pa.chunked_array([pa.repeat(pa.scalar(kind), len(keys))], pa.string())
    return pa.table({"kind": kinds, "key": keys}, schema=LEDGER_SCHEMA)
