"""Batch scoring: a day of the feature table (or any Parquet file) -> the scored table.

Batch-transform semantics, in process: the model version the endpoint serves
(or one given, which must be approved) is loaded with the same ``inference.py``
the endpoint and SageMaker batch transform use, rows are scored in mini-batches,
and every transaction gets ``score``, ``decision`` (``alert`` when the score is
at or above the model's alert threshold, else ``clear``), the model version and
the scoring time. Output goes to ``scored/transactions/dt=YYYY-MM-DD/`` through
a temporary file and ``os.replace``, so a partition is replaced whole or not at
all, and a rerun replaces rather than duplicates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.fileio import atomic_path
from pipelines.core.params import ParameterError, check_alert_threshold
from pipelines.core.schema import PARTITION_COLUMN
from pipelines.core.workspace import Workspace
from pipelines.data.lake.catalog import register_table
from pipelines.data.lake.tables import SCORED_SCHEMA
from pipelines.serving.deploy.artifacts import ModelBundle, materialize
from pipelines.serving.deploy.selection import select_package
from pipelines.serving.endpoint.handler import InferenceHandler

if TYPE_CHECKING:  # only categorical features need pandas (Arrow's to_pandas), at run time
    import pandas as pd

ID_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "timestamp",
    "amount",
)
ALERT, CLEAR = "alert", "clear"
PART_FILE = "part-00000.parquet"
BATCH_ROWS = 250_000  # mini-batch size: bounds memory of the feature matrix copy

Progress = Callable[[int, int], None]


class ScoringError(Exception):
    """The input cannot be scored; the message names the file or column and the fix."""


@dataclass
class ScoringSummary:
    """What one scoring run did."""

    rows: int
    alerts: int
    model_version: int
    model_package_arn: str
    threshold: float
    partitions: dict[str, int] = field(default_factory=dict)  # dt -> rows now in the partition
    seconds: float = 0.0
    catalog: str = "not registered"
    # The rows scored at or above the threshold, in SCORED_SCHEMA: what alerts are raised
    # from (``pipelines.serving.score_and_alert``) without reading the partitions back.
    alert_rows: pa.Table = field(default_factory=SCORED_SCHEMA.empty_table, repr=False)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")


# --- model and threshold --------------------------------------------------------


def _threshold_from_evaluation(package: dict[str, Any], workspace: Workspace) -> float | None:
    statistics = (package.get("ModelMetrics") or {}).get("ModelQuality", {}).get("Statistics", {})
    uri = statistics.get("S3Uri")
    if not uri:
        return None
    try:
        path = workspace.local_path(uri)
    except ValueError:
        return None
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("alert_threshold")
    return None if value is None else float(value)


def resolve_threshold(
    package: dict[str, Any], bundle: ModelBundle, workspace: Workspace, override: float | None
) -> float:
    """``override``, else the package metadata, evaluation.json, training metadata, in order."""
    candidates: list[tuple[str, Any]] = [
        ("--threshold", override),
        (
            "CustomerMetadataProperties.alert_threshold",
            (package.get("CustomerMetadataProperties") or {}).get("alert_threshold"),
        ),
        ("evaluation.json alert_threshold", _threshold_from_evaluation(package, workspace)),
        ("training_metadata.json alert_threshold", bundle.metadata.get("alert_threshold")),
    ]
    for source, value in candidates:
        if value is None:
            continue
        try:
            return check_alert_threshold(value, source)
        except ParameterError as exc:
            raise ScoringError(str(exc)) from None
    raise ScoringError(
        f"model version {bundle.version} records no alert threshold "
        "(no evaluation.json alert_threshold): pass --threshold"
    )


@dataclass
class LoadedModel:
    """A model version ready to score, with its alert threshold."""

    package: dict[str, Any]
    bundle: ModelBundle
    handler: InferenceHandler
    threshold: float


def load_model(
    workspace: Workspace,
    version: str | None = None,
    threshold: float | None = None,
    group: str | None = None,
) -> LoadedModel:
    """The deployed (or given approved) version, loaded through its inference handler."""
    package = select_package(workspace, version, group)
    bundle = materialize(package, workspace)
    handler = InferenceHandler.load(bundle.model_dir, bundle.code_dir, bundle.program, lock=False)
    return LoadedModel(
        package, bundle, handler, resolve_threshold(package, bundle, workspace, threshold)
    )


# --- input ------------------------------------------------------------------------


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    return []


def read_input(files: list[Path], feature_columns: list[str], where: str) -> pa.Table:
    """The id and feature columns of ``files``; a missing column is a clear error."""
    if not files:
        raise ScoringError(f"no Parquet files in {where}")
    wanted = list(dict.fromkeys([*ID_COLUMNS, *feature_columns]))  # a feature may be an id
    tables = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ScoringError(f"{path} is not a readable Parquet file: {exc}") from exc
        missing = [name for name in wanted if name not in schema.names]
        if missing:
            raise ScoringError(
                f"{path} lacks columns {missing}: score the feature table "
                "('fraudops features') or a file with the model's features"
            )
        tables.append(pq.read_table(path, columns=wanted))
    return pa.concat_tables(tables, promote_options="permissive")


def _day_of(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ScoringError(f"--date {value!r} is not a day like 2026-01-31") from None


# --- scoring ----------------------------------------------------------------------


def feature_matrix(table: pa.Table, feature_columns: list[str]) -> np.ndarray | pd.DataFrame:
    """Features as one float64 matrix in the model's order (null -> NaN, XGBoost's missing).

    ``predict_fn`` accepts a matrix as it does a parsed request; building it
    straight from Arrow avoids a pandas copy per mini-batch. A model with
    categorical user features gets a DataFrame instead: their text values are
    encoded by the model's own categories in ``predict_fn``.
    """
    if any(pa.types.is_string(table.schema.field(name).type)
           or pa.types.is_large_string(table.schema.field(name).type) for name in feature_columns):
        return table.select(feature_columns).to_pandas()
    matrix = np.empty((table.num_rows, len(feature_columns)), dtype=np.float64)
    for index, name in enumerate(feature_columns):
        try:
            column = pc.cast(table.column(name), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ScoringError(f"feature column {name!r} is not numeric: {exc}") from exc
        matrix[:, index] = column.to_numpy(zero_copy_only=False)
    return matrix


def _id_columns(table: pa.Table) -> dict[str, Any]:
    """The identifying columns in the scored table's types, or a clear error."""
    targets = {
        "transaction_id": pa.string(),
        "customer_id": pa.string(),
        "terminal_id": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "amount": pa.float64(),
    }
    columns = {}
    for name, target in targets.items():
        try:
            columns[name] = pc.cast(table.column(name), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ScoringError(
                f"column {name!r} cannot be read as {target} ({exc}); timestamps must be "
                "UTC timestamps, as in the feature table"
            ) from exc
    return columns


def score_table(
    model: LoadedModel, table: pa.Table, scored_at: datetime, progress: Progress | None = None
) -> pa.Table:
    """Score every row of ``table`` in mini-batches; return rows in SCORED_SCHEMA."""
    features = model.bundle.feature_columns
    scores = np.empty(table.num_rows, dtype=np.float64)
    for start in range(0, table.num_rows, BATCH_ROWS):
        batch = table.slice(start, BATCH_ROWS)
        matrix = feature_matrix(batch, features)
        scores[start : start + batch.num_rows] = np.asarray(
            model.handler.predict(matrix), dtype=np.float64
        ).ravel()
        if progress:
            progress(start + batch.num_rows, table.num_rows)
    alerts = pa.array(scores >= model.threshold, pa.bool_())
    n = table.num_rows
    columns = _id_columns(table)
    columns["score"] = pa.array(scores, pa.float64())
    columns["decision"] = pc.if_else(alerts, ALERT, CLEAR)
    columns["model_version"] = pa.array(np.full(n, model.bundle.version, dtype=np.int64))
    columns["scored_at"] = pa.array(
        np.full(n, np.datetime64(scored_at.replace(tzinfo=None), "us")),
        pa.timestamp("us", tz="UTC"),
    )
    return pa.table(columns).cast(SCORED_SCHEMA)


# --- output -----------------------------------------------------------------------


def partition_dir(workspace: Workspace, day: str) -> Path:
    return workspace.scored / f"{PARTITION_COLUMN}={day}"


def write_partition(workspace: Workspace, day: str, table: pa.Table, merge: bool) -> int:
    """Replace ``dt=day`` atomically; with ``merge``, keep rows of other transactions.

    Merging (for ``--input`` files that may hold part of a day) drops existing
    rows whose transaction_id is being rescored, so reruns never duplicate.
    """
    from pipelines.compliance.locks import workspace_lock

    target_dir = partition_dir(workspace, day)
    target_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock(workspace, exclusive=False):
        # Only batch scoring's own file is replaced: the stream scorer's
        # ``stream-*.parquet`` micro-batches in the same day stay.
        existing = [p for p in parquet_files(target_dir) if not p.name.startswith("stream-")]
        if merge and existing:
            old = pa.concat_tables(pq.read_table(p).cast(SCORED_SCHEMA) for p in existing)
            keep = pc.invert(pc.is_in(old.column("transaction_id"), table.column("transaction_id")))
            table = pa.concat_tables([old.filter(keep), table])
        target = target_dir / PART_FILE
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        for stale in existing:
            if stale != target:
                stale.unlink(missing_ok=True)
    return table.num_rows


def _register_catalog(workspace: Workspace) -> str:
    """Register the scored zone with the catalog.

    The scores are already written; a busy catalog only delays the view (rerun,
    or ``pipelines.data.lake.refresh_catalog``), so it is reported, not raised.
    """
    try:
        register_table(workspace, "scored", workspace.scored)
    except Exception as exc:  # the data is safe; say why the view is missing
        return f"not registered yet ({type(exc).__name__}: {exc}); rerun to register it"
    return "scored"


def _split_by_day(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """The rows of each UTC day, by integer day number (strftime per row is slow)."""
    micros = pc.cast(table.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    day_numbers = micros // 86_400_000_000
    for number in np.unique(day_numbers):
        day = str(np.datetime64(int(number), "D"))
        yield day, table.filter(pa.array(day_numbers == number))


def _score_and_write(
    workspace: Workspace,
    model: LoadedModel,
    table: pa.Table,
    merge: bool,
    only_day: str | None,
    progress: Progress | None,
) -> ScoringSummary:
    started = time.perf_counter()
    scored = score_table(model, table, datetime.now(UTC), progress)
    partitions = {}
    if only_day:
        partitions[only_day] = write_partition(workspace, only_day, scored, merge=merge)
    else:
        for day, rows in _split_by_day(scored):
            partitions[day] = write_partition(workspace, day, rows, merge=merge)
    alert_rows = scored.filter(pc.equal(scored.column("decision"), ALERT))
    summary = ScoringSummary(
        rows=scored.num_rows,
        alerts=alert_rows.num_rows,
        model_version=model.bundle.version,
        model_package_arn=model.bundle.package_arn,
        threshold=model.threshold,
        partitions=partitions,
        alert_rows=alert_rows,
    )
    summary.catalog = _register_catalog(workspace)
    summary.seconds = time.perf_counter() - started
    return summary


def score_day(
    workspace: Workspace,
    day: str,
    model: LoadedModel | None = None,
    progress: Progress | None = None,
) -> ScoringSummary:
    """Score the feature table's ``dt=day`` and replace the scored partition of that day."""
    day = _day_of(day)
    model = model or load_model(workspace)
    source = workspace.features / f"{PARTITION_COLUMN}={day}"
    files = parquet_files(source)
    if not files:
        raise ScoringError(
            f"no feature rows for {day} in {source}: ingest that day and run 'fraudops features'"
        )
    table = read_input(files, model.bundle.feature_columns, str(source))
    return _score_and_write(workspace, model, table, merge=False, only_day=day, progress=progress)


def score_file(
    workspace: Workspace,
    path: Path,
    model: LoadedModel | None = None,
    progress: Progress | None = None,
) -> ScoringSummary:
    """Score a Parquet file (or directory) and merge its rows into their days' partitions."""
    model = model or load_model(workspace)
    table = read_input(parquet_files(path), model.bundle.feature_columns, str(path))
    if table.num_rows == 0:
        raise ScoringError(f"{path} has no rows to score")
    if table.column("timestamp").null_count:
        raise ScoringError(f"{path}: some rows have no timestamp; every row needs one")
    return _score_and_write(workspace, model, table, merge=True, only_day=None, progress=progress)
