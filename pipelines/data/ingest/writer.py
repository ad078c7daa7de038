"""Crash-safe publishing of a run's Parquet partitions.

A run never edits the lake in place:

1. every partition file is written under ``staging/<ingestion_id>/``;
2. a journal ``state/pending/<ingestion_id>.json`` lists staged -> final paths;
3. each staged file is renamed to ``<zone>/dt=YYYY-MM-DD/part-<ingestion_id>.parquet``;
4. the ledger commits (one atomic rename: the run's commit point);
5. the journal and staging directory are removed.

A crash before (4) is rolled back by ``recover`` at the start of the next run
(the run's files are removed by name, so earlier data is never touched); a
crash after (4) is rolled forward. Either way a rerun ends consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.core import schema
from pipelines.data.ingest.layout import LakeLayout
from pipelines.data.ingest.ledger import Ledger

WRITE_THREADS = 2


@dataclass(frozen=True)
class StagedFile:
    staged: str
    final: str


def _journal_path(layout: LakeLayout, ingestion_id: str) -> str:
    return f"{layout.state}/pending/{ingestion_id}.json"


def _staging_dir(layout: LakeLayout, ingestion_id: str) -> str:
    return f"{layout.staging}/{ingestion_id}"


def split_by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """Slices of a ``dt``-sorted table, one per day (zero-copy)."""
    if table.num_rows == 0:
        return []
    days = pc.value_counts(table.column(schema.PARTITION_COLUMN))
    counts = {d["values"].as_py(): d["counts"].as_py() for d in days}
    slices, offset = [], 0
    for day in sorted(counts):
        slices.append((day, table.slice(offset, counts[day])))
        offset += counts[day]
    return slices


def partitions_of(table: pa.Table) -> list[str]:
    """The ``dt=YYYY-MM-DD`` partitions a table's rows go to."""
    return [f"{schema.PARTITION_COLUMN}={day}" for day, _ in split_by_day(table)]


def stage_zone(
    layout: LakeLayout, ingestion_id: str, zone_dir: str, zone: str, table: pa.Table
) -> list[StagedFile]:
    """Write one file per day of ``table`` (sorted by ``dt``) into staging."""
    name = f"part-{ingestion_id}.parquet"
    jobs = []
    for day, part in split_by_day(table):
        partition = f"{schema.PARTITION_COLUMN}={day}"
        staged_dir = f"{_staging_dir(layout, ingestion_id)}/{zone}/{partition}"
        layout.fs.create_dir(staged_dir, recursive=True)
        jobs.append((part, StagedFile(f"{staged_dir}/{name}", f"{zone_dir}/{partition}/{name}")))
    # Parquet encoding releases the GIL: two days at a time use both cores.
    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        list(pool.map(lambda job: write_parquet(layout.fs, job[0], job[1].staged), jobs))
    return [staged for _, staged in jobs]


# Columns worth dictionary-encoding in the files (few distinct values per day).
_LOW_CARDINALITY = {
    "card_token", "card_masked", "currency", "merchant_category",
    "channel", "country", "fraud_scenario", "source_file", "ingestion_id", "dt", "reason",
}


_STATISTICS = {"timestamp", "amount", "dt", "source_line"}


def write_parquet(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Write one Parquet file whose readers see plain strings for any dictionary column.

    ``store_schema=False`` leaves out the in-memory Arrow schema, so pyarrow,
    DuckDB, Spark and Athena all read ``schema.CURATED_SCHEMA`` types.
    """
    pq.write_table(
        table, path, filesystem=fs, compression="snappy", row_group_size=256_000,
        use_dictionary=[c for c in table.column_names if c in _LOW_CARDINALITY],
        # Min/max only where readers prune on them; string statistics cost ~20% of a write.
        write_statistics=[c for c in table.column_names if c in _STATISTICS],
        store_schema=False,
    )


def write_journal(layout: LakeLayout, ingestion_id: str, files: list[StagedFile],
                  report: dict) -> None:
    layout.write_json(
        _journal_path(layout, ingestion_id),
        {"ingestion_id": ingestion_id, "files": [[f.staged, f.final] for f in files],
         "report": report},
    )


def _move_into_place(fs: pafs.FileSystem, staged: StagedFile) -> None:
    fs.create_dir(staged.final.rsplit("/", 1)[0], recursive=True)
    fs.move(staged.staged, staged.final)


def publish(layout: LakeLayout, files: list[StagedFile]) -> None:
    """Rename staged files into the lake (each rename is atomic on a local filesystem)."""
    for staged in files:
        _move_into_place(layout.fs, staged)


def finish(layout: LakeLayout, ingestion_id: str) -> None:
    """Remove the journal and staging leftovers of a committed run."""
    _delete_dir_if_exists(layout.fs, _staging_dir(layout, ingestion_id))
    _delete_file_if_exists(layout.fs, _journal_path(layout, ingestion_id))


def rollback(layout: LakeLayout, ingestion_id: str, files: list[StagedFile]) -> None:
    """Undo an uncommitted run: its published files (named by its id), staging, journal."""
    for staged in files:
        _delete_file_if_exists(layout.fs, staged.final)
    _delete_dir_if_exists(layout.fs, _staging_dir(layout, ingestion_id))
    _delete_file_if_exists(layout.fs, _journal_path(layout, ingestion_id))


def recover(
    layout: LakeLayout, ledger: Ledger, on_rolled_forward: Callable[[dict], None]
) -> list[str]:
    """Bring the lake back to a consistent state after a crash; return what was done.

    Must run under the ingestion lock, before a new run reads the ledger.
    """
    pending_dir = f"{layout.state}/pending"
    actions = [
        removed
        for directory in (pending_dir, ledger.root, layout.logs)
        for removed in _remove_temporaries(layout, directory)
    ]
    if layout.exists(pending_dir):
        selector = pafs.FileSelector(pending_dir)
        for info in layout.fs.get_file_info(selector):
            if not info.path.endswith(".json") or info.base_name.startswith("_"):
                continue
            journal = layout.read_json(info.path)
            ingestion_id = journal["ingestion_id"]
            if ledger.is_committed(ingestion_id):
                on_rolled_forward(journal["report"])
                finish(layout, ingestion_id)
                actions.append(f"completed committed run {ingestion_id}")
            else:
                files = [StagedFile(s, f) for s, f in journal["files"]]
                rollback(layout, ingestion_id, files)
                actions.append(f"rolled back interrupted run {ingestion_id}")
    # Staging without a journal: the run died while writing; the lake was never touched.
    if layout.exists(layout.staging):
        for info in layout.fs.get_file_info(pafs.FileSelector(layout.staging)):
            if info.type == pafs.FileType.Directory:
                _delete_dir_if_exists(layout.fs, info.path)
                actions.append(f"removed unfinished staging {info.base_name}")
    return actions


def _remove_temporaries(layout: LakeLayout, directory: str) -> list[str]:
    """Half-written ``_tmp-*`` files a killed run left (``write_json``, ``Ledger.commit``)."""
    if not layout.exists(directory):
        return []
    removed = []
    for info in layout.fs.get_file_info(pafs.FileSelector(directory)):
        if info.type == pafs.FileType.File and info.base_name.startswith("_tmp-"):
            layout.fs.delete_file(info.path)
            removed.append(f"removed leftover {info.base_name}")
    return removed


def _delete_file_if_exists(fs: pafs.FileSystem, path: str) -> None:
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def _delete_dir_if_exists(fs: pafs.FileSystem, path: str) -> None:
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
