"""The local stream scorer: records in, scored micro-batches, alerts and dead letters out.

Exactly-once by construction. Each micro-batch gets a sequence number ``seq``
and is written as ``scored/transactions/dt=D/stream-<seq>.parquet`` and
``dead_letters/stream/dt=D/dead-<seq>.parquet`` (temporary file, then
``os.replace``). The online state, the processed transaction ids, the dead
letter fingerprints and the last ``seq`` are then committed together in one
SQLite transaction (:class:`~pipelines.serving.online.store.LocalStateStore`). On start,
output files newer than the committed ``seq`` (a run that died between writing
and committing) are deleted; replaying the input skips every transaction
already committed, so a killed run restarted on the same input ends with the
same scored rows, each transaction once. Alerts are idempotent per transaction
(the case queue refuses a second alert for one transaction). Commits are
incremental (the entities touched since the last one) and happen every
``commit_interval_seconds`` (30 s by default), so a crash replays at most that
much input, over the same output files.

A failed batch publishes a "Stream Batch Failed" notification and stops
without committing, so nothing half-done is ever recorded as done.
"""

from __future__ import annotations

import gc
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.compliance.locks import workspace_lock
from pipelines.core.failures import notify_failure
from pipelines.core.fileio import atomic_path
from pipelines.core.notifications import Notifier
from pipelines.core.params import (
    DEFAULT_ALLOWED_LATENESS_SECONDS,
    check_label_delay_days,
    check_max_future_skew_seconds,
    check_whole_seconds,
)
from pipelines.core.schema import PARTITION_COLUMN
from pipelines.core.workspace import Workspace
from pipelines.data.ingest.columns import effective_time_origin, effective_time_unit
from pipelines.data.ingest.tokenise import Tokeniser
from pipelines.data.labels import LABEL_SCHEMA
from pipelines.serving.alerts.alerting import AlertPolicy, AlertStore, raise_alerts
from pipelines.serving.online.engine import OnlineFeatureEngine
from pipelines.serving.online.store import LocalStateStore
from pipelines.serving.stream.core import (
    BatchOutcome,
    StreamModel,
    process_batch,
    reason_kind,
    wall_clock,
)
from pipelines.serving.stream.source import RawRecord, RecordQueue

SCORED_PREFIX = "stream-"
DEAD_PREFIX = "dead-"
_SEQ = re.compile(r"^(?:stream|dead)-(\d{10})\.parquet$")
FAILURE_DETAIL_TYPE = "Stream Batch Failed"
# Dead-letter fingerprints remembered for replays; rejected records are rare.
MAX_DEAD_KEYS = 200_000


def dead_letter_dir(ws: Workspace) -> Path:
    """Where rejected stream records go, with the reason (``QUARANTINE_SCHEMA``)."""
    return ws.lake / "dead_letters" / "stream"


@dataclass
class StreamSettings:
    # Large batches amortise validation's fixed cost under load; max_wait bounds the
    # latency when traffic is light (a batch is flushed once its first record waited
    # this long).
    batch_size: int = 5000
    max_wait_seconds: float = 1.0
    # State commits at most this often (0: after every micro-batch). Outputs flush per
    # batch regardless; a crash replays the uncommitted batches over their own files.
    commit_interval_seconds: float = 30.0
    # Transactions may arrive this far behind the stream's newest (their own customer's,
    # terminal's... newest permitting); older ones are dead-lettered out_of_order.
    allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS
    # Transactions may be dated this far ahead of the processing clock; later ones are
    # dead-lettered future_timestamp before they touch the state (a wrong clock would
    # otherwise make every correctly dated record after it late). At most the lateness;
    # None: the default capped at the lateness.
    max_future_skew_seconds: int | None = None

    def __post_init__(self) -> None:
        check_whole_seconds(self.allowed_lateness_seconds,
                            "StreamSettings.allowed_lateness_seconds")
        self.max_future_skew_seconds = check_max_future_skew_seconds(
            self.max_future_skew_seconds, self.allowed_lateness_seconds,
            "StreamSettings.max_future_skew_seconds", "StreamSettings.allowed_lateness_seconds")


@dataclass
class StreamSummary:
    """Totals of one run (this run only; ``checkpoint`` holds all-time counts)."""

    run_id: str
    counts: dict[str, int] = field(default_factory=lambda: {
        "records": 0, "scored": 0, "alerts": 0, "dead_letters": 0, "duplicates": 0,
        "notified": 0, "batches": 0,
    })
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    recovered_files: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def records_per_second(self) -> float:
        return self.counts["records"] / self.seconds if self.seconds else float("nan")


def _write_atomic(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextmanager
def _full_collections_at_commits() -> Iterator[None]:
    """Let the garbage collector scan the whole heap only when the state is committed.

    The online state is millions of long-lived objects; Python's automatic full
    collections traverse all of them again and again (a quarter of the CPU of a
    stream). Young collections still run, and :meth:`StreamScorer.commit` runs a
    full one, so cyclic garbage is still reclaimed, once per commit interval.
    """
    previous = gc.get_threshold()
    young, middle, _ = previous
    gc.set_threshold(young, middle, 1_000_000)  # full collection: effectively never by itself
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _by_day(table: pa.Table, column: str) -> Iterator[tuple[str, pa.Table]]:
    if table.num_rows == 0:
        return
    days = table.column(column)
    if not pa.types.is_string(days.type):
        days = pc.strftime(days, format="%Y-%m-%d")
    for day in sorted(set(days.to_pylist())):
        yield day, table.filter(pc.equal(days, day))


class StreamScorer:
    """Runs micro-batches through :func:`process_batch` and commits them exactly once."""

    def __init__(
        self,
        ws: Workspace,
        model: StreamModel,
        tokeniser: Tokeniser,
        alert_store: AlertStore,
        notifier: Notifier,
        settings: StreamSettings | None = None,
        source: str = "stream",
        column_map: Mapping[str, str] | None = None,
        time_origin: datetime | None = None,
        time_unit: str | None = None,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.ws = ws
        self.model = model
        self.tokeniser = tokeniser
        self.alert_store = alert_store
        self.notifier = notifier
        self.settings = settings or StreamSettings()
        self.source = source
        self.column_map = dict(column_map or {})
        self.time_origin = effective_time_origin(time_origin, column_map)
        self.time_unit = effective_time_unit(time_unit, column_map, self.time_origin)
        # What event times are checked against (max_future_skew_seconds), read per batch.
        self.clock = clock
        self.store = LocalStateStore.for_workspace(ws)
        self.policy = AlertPolicy(threshold=model.threshold)
        self.run_id = f"stream-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        # The online state must use the delay the model's features were built with.
        delay = getattr(model, "label_delay_days", None)
        if delay is None:
            raise ValueError(
                f"model version {model.version} records no label_delay_days (its "
                "feature_set.json); deploy a model trained on a feature table built by "
                "`fraudops features`"
            )
        self.label_delay_days = check_label_delay_days(delay, f"model version {model.version}")
        self.engine: OnlineFeatureEngine | None = None
        self.checkpoint: dict[str, Any] = {}
        self._since_commit = 0
        self._last_commit = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------------------
    def run(
        self,
        records: Iterator[RawRecord],
        stop: threading.Event | None = None,
        progress: Callable[[StreamSummary], None] | None = None,
    ) -> StreamSummary:
        """Score ``records`` until they end (or ``stop`` is set); commit and return totals."""
        stop = stop or threading.Event()
        summary = StreamSummary(self.run_id)
        started = time.perf_counter()
        with self.store.exclusive(), _full_collections_at_commits():
            self.engine, self.checkpoint = self.store.load(
                self.label_delay_days, self.settings.allowed_lateness_seconds)
            self.checkpoint.setdefault("seq", 0)
            self.checkpoint.setdefault("dead_keys", [])
            self.checkpoint.setdefault("label_files", [])
            summary.recovered_files = self.recover()
            self.refresh_labels()
            queue = RecordQueue(records, capacity=max(10 * self.settings.batch_size, 1000))
            batch: list[RawRecord] = []
            batch_started = time.monotonic()
            while not stop.is_set():
                taken = queue.get_many(self.settings.batch_size - len(batch),
                                       timeout=min(0.2, self.settings.max_wait_seconds))
                if taken:
                    if not batch:
                        batch_started = time.monotonic()
                    batch.extend(taken)
                due = time.monotonic() - batch_started >= self.settings.max_wait_seconds
                if batch and (len(batch) >= self.settings.batch_size or queue.finished or due):
                    self.process(batch, summary)
                    batch = []
                    if progress:
                        progress(summary)
                if queue.finished:
                    break
            if batch:  # stopped with records in hand: finish them before committing
                self.process(batch, summary)
            self.commit()
        summary.stopped = stop.is_set()
        summary.seconds = time.perf_counter() - started
        return summary

    def recover(self) -> int:
        """Delete outputs of batches that were written but never committed."""
        committed = int(self.checkpoint["seq"])
        removed = 0
        for root in (self.ws.scored, dead_letter_dir(self.ws)):
            if not root.exists():
                continue
            for path in root.glob(f"{PARTITION_COLUMN}=*/*.parquet"):
                match = _SEQ.match(path.name)
                if match and int(match.group(1)) > committed:
                    path.unlink()
                    removed += 1
        return removed

    def refresh_labels(self) -> int:
        """Apply label files (feedback, case dispositions) not applied yet, oldest first."""
        assert self.engine is not None
        applied_files = set(self.checkpoint["label_files"])
        new = sorted(
            p for p in self.ws.labels.glob("dt=*/labels-*.parquet")
            if str(p.relative_to(self.ws.labels)) not in applied_files
        )
        if not new:
            return 0
        table = pa.concat_tables(pq.read_table(p, schema=LABEL_SCHEMA) for p in new)
        table = table.sort_by([("label_known_at", "ascending"), ("transaction_id", "ascending")])
        known = pc.cast(table.column("label_known_at"), pa.timestamp("us", tz="UTC"))
        labels = zip(
            table.column("transaction_id").to_pylist(),
            table.column("is_fraud").to_pylist(),
            known.cast(pa.int64()).to_pylist(),
            strict=True,
        )
        applied = self.engine.apply_labels(labels)
        self.checkpoint["label_files"] = sorted(
            applied_files | {str(p.relative_to(self.ws.labels)) for p in new}
        )
        return applied

    # --- one micro-batch ------------------------------------------------------------------------
    def process(self, batch: list[RawRecord], summary: StreamSummary) -> BatchOutcome:
        """Score, write and alert one micro-batch; notify and re-raise if anything fails."""
        assert self.engine is not None
        seq = int(self.checkpoint["seq"]) + self._since_commit + 1
        try:
            outcome = process_batch(
                batch,
                engine=self.engine,
                model=self.model,
                tokeniser=self.tokeniser,
                scored_before=self.store.seen,
                seen_dead_keys=self.checkpoint["dead_keys"],
                source=self.source,
                run_id=self.run_id,
                column_map=self.column_map,
                time_origin=self.time_origin,
                time_unit=self.time_unit,
                processing_time=self.clock(),
                max_future_skew_seconds=self.settings.max_future_skew_seconds,
            )
            self._write(outcome, seq)
            alert_counts = raise_alerts(outcome.alerts, self.policy, self.alert_store,
                                        self.notifier)
        except Exception as exc:
            self._notify_failure(seq, batch, exc)
            raise
        self.store.mark_processed(outcome.processed)
        dead_keys = self.checkpoint["dead_keys"] + outcome.dead_letter_keys
        self.checkpoint["dead_keys"] = dead_keys[-MAX_DEAD_KEYS:]
        self._since_commit += 1
        for name, value in outcome.counts.items():
            summary.counts[name] = summary.counts.get(name, 0) + value
        summary.counts["notified"] += alert_counts["notified"]
        summary.counts["batches"] += 1
        for reason in map(reason_kind, outcome.dead_letters.column("reason").to_pylist()):
            summary.dead_letter_reasons[reason] = summary.dead_letter_reasons.get(reason, 0) + 1
        if time.monotonic() - self._last_commit >= self.settings.commit_interval_seconds:
            self.commit()
        return outcome

    def _write(self, outcome: BatchOutcome, seq: int) -> None:
        with workspace_lock(self.ws, exclusive=False):
            for day, rows in _by_day(outcome.scored, "timestamp"):
                partition = self.ws.scored / f"{PARTITION_COLUMN}={day}"
                _write_atomic(rows, partition / f"{SCORED_PREFIX}{seq:010d}.parquet")
            for day, rows in _by_day(outcome.dead_letters, PARTITION_COLUMN):
                partition = dead_letter_dir(self.ws) / f"{PARTITION_COLUMN}={day}"
                _write_atomic(rows, partition / f"{DEAD_PREFIX}{seq:010d}.parquet")

    def commit(self) -> None:
        """Make every written batch count: state, processed ids and seq in one transaction."""
        assert self.engine is not None
        if self._since_commit == 0 and self.store.path.exists():
            return
        self.checkpoint["seq"] = int(self.checkpoint["seq"]) + self._since_commit
        self.store.commit(self.engine, self.checkpoint)
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self.refresh_labels()
        gc.collect()  # the one full collection per commit interval

    def _notify_failure(self, seq: int, batch: list[RawRecord], exc: BaseException) -> None:
        lines = f"lines {batch[0].line}-{batch[-1].line}" if batch else "no records"
        event = {
            "source": "fraudops.stream",
            "detail-type": FAILURE_DETAIL_TYPE,
            "detail": {
                "execution": self.run_id,
                "step": f"micro-batch {seq} ({lines} of {self.source})",
                "error": f"{type(exc).__name__}: {exc}",
                "log": str(self.store.directory),
            },
        }
        notify_failure(event, self.notifier)
