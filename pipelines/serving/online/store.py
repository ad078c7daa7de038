"""Where the online feature state lives between transactions and between runs.

* :class:`LocalStateStore`: the embedded store, SQLite under
  ``<workspace>/state/online/state.sqlite``. Each commit is one transaction
  holding the entities that changed, the processed transaction ids and the
  caller's checkpoint (e.g. the stream's batch sequence): a crash leaves the
  previous commit intact, so a restart resumes exactly from it. A lock file
  keeps two writers apart.
* :class:`DynamoStateStore`: one DynamoDB item per entity key (the Lambda's
  ``STATE_TABLE``, hash key ``entity``), read for a batch's keys and written
  back when changed.
"""

from __future__ import annotations

import fcntl
import json
import pickle
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.core.params import DEFAULT_ALLOWED_LATENESS_SECONDS
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURE_SET_VERSION
from pipelines.serving.online.engine import (
    EngineMeta,
    EntityState,
    Event,
    FrameState,
    OnlineFeatureEngine,
)

STATE_FILE = "state.sqlite"
LOCK_FILE = ".lock"
STATE_FORMAT = "5"  # bump when the pickled entity layout or the tables change
# Processed ids are kept for replays a day longer than the features look back.
PROCESSED_MARGIN_US = 86_400_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    plan INTEGER NOT NULL, key BLOB NOT NULL, state BLOB NOT NULL, PRIMARY KEY (plan, key)
);
CREATE TABLE IF NOT EXISTS label_chunks (
    id INTEGER PRIMARY KEY, max_ts INTEGER NOT NULL, entries BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_labels (
    tx TEXT PRIMARY KEY, is_fraud INTEGER NOT NULL, known_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_chunks (
    id INTEGER PRIMARY KEY, max_ts INTEGER NOT NULL, ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def encode_entity(state: EntityState) -> tuple:
    """An entity as builtins only: each event once, frames and waiting slots by event seq.

    Pickling the objects themselves calls back into Python for every object and
    looks their classes up on every call; plain tuples pickle about 3x faster,
    and the commit pickles every entity a commit interval touched.
    """
    events: dict[int, Event] = {}
    frames = []
    for frame in state.frames:
        for queue in (frame.pending, frame.inside):
            for event in queue:
                events[event.seq] = event
        for waiting in frame.waiting.values():
            events.update(waiting)
        frames.append((
            [e.seq for e in frame.pending],
            [e.seq for e in frame.inside],
            frame.totals,
            {slot: list(waiting) for slot, waiting in frame.waiting.items()},
        ))
    rows = [(e.seq, e.transaction_id, e.ts, e.env, e.values) for e in events.values()]
    return state.next_seq, rows, frames


def decode_entity(data: tuple) -> EntityState:
    """The inverse of :func:`encode_entity`: one Event object per seq, shared by its frames."""
    next_seq, rows, frames = data
    events = {row[0]: Event(*row) for row in rows}
    return EntityState(
        [
            FrameState(
                deque([events[s] for s in pending]),
                deque([events[s] for s in inside]),
                totals,
                {slot: {s: events[s] for s in seqs} for slot, seqs in waiting.items()},
            )
            for pending, inside, totals, waiting in frames
        ],
        next_seq,
    )


class StateError(Exception):
    """The stored state cannot be used as it is; the message says what to do."""


def online_dir(ws: Workspace) -> Path:
    return ws.state_dir / "online"


class LocalStateStore:
    """The embedded online state in SQLite; each commit writes only what changed.

    One transaction per commit holds the changed entities, new label-index
    entries, newly processed transaction ids and the caller's checkpoint, so
    state, dedupe ids and checkpoint can never disagree after a crash. Commit
    cost follows the traffic since the last commit, not the size of the state.

    Label-index entries and processed ids are insert-only and expire by time, so
    each commit stores its new ones as one pickled chunk (a row per commit, not
    per transaction: per-row inserts cost more than computing the features).
    Processed ids are held in memory for ``seen``, like the label index itself.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self._pending_processed: dict[str, int] = {}
        self._processed: dict[str, int] | None = None  # committed ids, loaded on first use

    @classmethod
    def for_workspace(cls, ws: Workspace) -> LocalStateStore:
        return cls(online_dir(ws))

    def _connect(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        con.executescript(_SCHEMA)
        return con

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store for one writer; a second stream fails fast instead of corrupting it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"another stream is using the online state in {self.directory}; "
                    "stop it first (one stream scorer per workspace)"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- reading --------------------------------------------------------------------------
    def _meta(self, con: sqlite3.Connection) -> dict[str, str]:
        return dict(con.execute("SELECT name, value FROM meta").fetchall())

    def load(
        self, label_delay_days: int,
        allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
    ) -> tuple[OnlineFeatureEngine, dict[str, Any]]:
        """The engine as of the last commit (fresh if none) and that commit's checkpoint."""
        self._pending_processed = {}
        self._processed = None
        if not self.path.exists():
            return OnlineFeatureEngine(label_delay_days,
                                       allowed_lateness_seconds=allowed_lateness_seconds), {}
        try:
            con = self._connect()
            try:
                return self._load(con, label_delay_days, allowed_lateness_seconds)
            finally:
                con.close()
        except (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError) as exc:
            raise StateError(
                f"{self.path} is unreadable ({exc}); restore it from a backup or delete "
                f"{self.directory} to rebuild the state by replaying transactions"
            ) from exc

    def _load(self, con: sqlite3.Connection, label_delay_days: int,
              allowed_lateness_seconds: int):
        engine = OnlineFeatureEngine(label_delay_days,
                                     allowed_lateness_seconds=allowed_lateness_seconds)
        meta = self._meta(con)
        if not meta:
            return engine, {}
        if meta.get("format") != STATE_FORMAT:
            raise StateError(
                f"{self.path} was written by another version of the online engine (format "
                f"{meta.get('format')}, now {STATE_FORMAT}): delete {self.directory} and "
                "replay recent transactions to rebuild the state"
            )
        if meta.get("feature_set_version") != FEATURE_SET_VERSION:
            raise StateError(
                f"{self.path} holds state for feature set {meta.get('feature_set_version')}, "
                f"but the definitions are now {FEATURE_SET_VERSION}: delete {self.directory} "
                "and replay recent transactions to rebuild the state"
            )
        if int(meta["label_delay_days"]) != label_delay_days:
            raise StateError(
                f"{self.path} was built with a {meta['label_delay_days']}-day label delay but "
                f"the model uses {label_delay_days}; rebuild the state for this model"
            )
        for plan, key, state in con.execute("SELECT plan, key, state FROM entities"):
            engine.entities[plan][pickle.loads(key)] = decode_entity(pickle.loads(state))  # noqa: S301
        watermark = json.loads(meta["watermark"])
        engine.meta = EngineMeta(
            watermark=watermark,
            floor=stored_floor(meta, watermark),
            pending_labels={
                tx: (int(f), int(k))
                for tx, f, k in con.execute("SELECT tx, is_fraud, known_us FROM pending_labels")
            },
        )
        engine.meta.label_index = self._load_label_index(con, engine.oldest_useful_us())
        self._processed = self._load_processed(con)
        return engine, json.loads(meta["checkpoint"])

    @staticmethod
    def _load_label_index(con: sqlite3.Connection, oldest: int | None) -> dict[str, tuple]:
        """Entries still useful, in time order (``OnlineFeatureEngine.prune`` stops early)."""
        entries = []
        for (blob,) in con.execute("SELECT entries FROM label_chunks ORDER BY id"):
            entries.extend(pickle.loads(blob))  # noqa: S301 - our own state file
        entries.sort(key=lambda entry: entry[1])
        return {tx: (ts, refs) for tx, ts, refs in entries if oldest is None or ts >= oldest}

    @staticmethod
    def _load_processed(con: sqlite3.Connection) -> dict[str, int]:
        processed: dict[str, int] = {}
        for (blob,) in con.execute("SELECT ids FROM processed_chunks ORDER BY id"):
            processed.update(pickle.loads(blob))  # noqa: S301 - our own state file
        cutoff = _processed_cutoff(con)
        if cutoff is not None:
            processed = {tx: ts for tx, ts in processed.items() if ts >= cutoff}
        return processed

    def seen(self, transaction_ids: Iterable[str]) -> set[str]:
        """Which of these transactions were processed (committed, or since the last commit)."""
        committed = self._committed_processed()
        pending = self._pending_processed
        return {i for i in transaction_ids if i is not None and (i in pending or i in committed)}

    def _committed_processed(self) -> dict[str, int]:
        if self._processed is None:
            if not self.path.exists():
                self._processed = {}
            else:
                con = self._connect()
                try:
                    self._processed = self._load_processed(con)
                finally:
                    con.close()
        return self._processed

    def mark_processed(self, processed: dict[str, int]) -> None:
        """Transactions scored since the last commit (written with the next commit)."""
        self._pending_processed.update(processed)

    # --- writing --------------------------------------------------------------------------
    def commit(self, engine: OnlineFeatureEngine, checkpoint: dict[str, Any]) -> None:
        """Write what changed, the processed ids and the checkpoint in one transaction."""
        engine.prune()
        oldest = engine.oldest_useful_us()
        committed = self._committed_processed()  # read before this commit adds to the file
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            for plan, entities in enumerate(engine.entities):
                con.executemany(
                    "INSERT OR REPLACE INTO entities (plan, key, state) VALUES (?, ?, ?)",
                    [(plan, pickle.dumps(k, protocol=5),
                      pickle.dumps(encode_entity(entities[k]), protocol=5))
                     for k in engine.touched[plan]],
                )
            self._write_labels(con, engine, oldest)
            cutoff = None if oldest is None else oldest - PROCESSED_MARGIN_US
            self._write_processed(con, cutoff)
            meta = {
                "format": STATE_FORMAT,
                "feature_set_version": FEATURE_SET_VERSION,
                "label_delay_days": str(engine.label_delay_days),
                "watermark": json.dumps(engine.meta.watermark),
                "floor": json.dumps(engine.meta.floor),
                "checkpoint": json.dumps(checkpoint),
            }
            con.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                            meta.items())
            con.execute("COMMIT")
            for touched in engine.touched:
                touched.clear()
            engine.touched_labels.clear()
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()
        committed.update(self._pending_processed)
        if cutoff is not None:
            # A replay of anything older would be out of order anyway (a day's margin).
            for tx in [tx for tx, ts in committed.items() if ts < cutoff]:
                del committed[tx]
        self._pending_processed = {}

    def _write_processed(self, con: sqlite3.Connection, cutoff: int | None) -> None:
        new = self._pending_processed
        if new:
            con.execute(
                "INSERT INTO processed_chunks (max_ts, ids) VALUES (?, ?)",
                (max(new.values()), pickle.dumps(new, protocol=5)),
            )
        if cutoff is not None:
            con.execute("DELETE FROM processed_chunks WHERE max_ts < ?", (cutoff,))
            con.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                        ("processed_cutoff", str(cutoff)))

    def _write_labels(self, con: sqlite3.Connection, engine: OnlineFeatureEngine,
                      oldest: int | None) -> None:
        index = engine.meta.label_index
        entries = [(tx, *index[tx]) for tx in engine.touched_labels if tx in index]
        if entries:
            con.execute(
                "INSERT INTO label_chunks (max_ts, entries) VALUES (?, ?)",
                (max(e[1] for e in entries), pickle.dumps(entries, protocol=5)),
            )
        if oldest is not None:
            con.execute("DELETE FROM label_chunks WHERE max_ts < ?", (oldest,))
        con.execute("DELETE FROM pending_labels")
        con.executemany(
            "INSERT INTO pending_labels (tx, is_fraud, known_us) VALUES (?, ?, ?)",
            [(tx, f, k) for tx, (f, k) in engine.meta.pending_labels.items()],
        )


def stored_floor(stored: Mapping[str, Any], watermark: int | None) -> int | None:
    """``EngineMeta.floor`` from stored meta (JSON text or a number). State written before
    the floor was stored was pruned as if nothing older than its watermark could ever be
    accepted (the engine then refused any older transaction): that is its floor."""
    if "floor" not in stored:
        return watermark
    value = stored["floor"]
    return json.loads(value) if isinstance(value, str) else value


def _processed_cutoff(con: sqlite3.Connection) -> int | None:
    """Processed ids older than this were dropped at the last commit (None: none yet)."""
    row = con.execute("SELECT value FROM meta WHERE name = 'processed_cutoff'").fetchone()
    return None if row is None else int(row[0])


# --- DynamoDB -----------------------------------------------------------------------------
ENTITY_PREFIX = "online"
META_KEY = f"{ENTITY_PREFIX}#meta"
_NULL = "\x00"  # stands for a NULL key part (e.g. a transaction without a channel)


def entity_item_key(plan_name: str, key: tuple) -> str:
    parts = [_NULL if part is None else str(part) for part in key]
    return f"{ENTITY_PREFIX}#{plan_name}#" + "\x1f".join(parts)


class DynamoEntityCache(MutableMapping):
    """One entity plan's states for the keys of a batch, written back on ``flush``."""

    def __init__(self, table: Any, plan_name: str) -> None:
        self.table = table
        self.plan_name = plan_name
        self.loaded: dict[tuple, EntityState] = {}
        self.dirty: set[tuple] = set()

    def __getitem__(self, key: tuple) -> EntityState:
        return self.loaded[key]

    def __setitem__(self, key: tuple, value: EntityState) -> None:
        self.loaded[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: tuple) -> None:
        raise NotImplementedError("online state items are never deleted by the scorer")

    def __iter__(self):
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)


class StateConflict(Exception):
    """Another invocation changed an item this one read: nothing was written; recompute."""


# DynamoDB's limit on the items one TransactWriteItems call may write.
MAX_TRANSACTION_ITEMS = 100


class DynamoStateStore:
    """Online state in DynamoDB: an item per entity key plus one for the engine meta.

    Every item carries a ``version``. :meth:`commit` writes the changed entities,
    the meta item and the caller's extra items (the processed ids) in one
    ``TransactWriteItems`` whose conditions say each item is still at the version
    read (or still absent): if a concurrent invocation committed in between,
    nothing is written and :class:`StateConflict` tells the caller to recompute
    from fresh state. So concurrent invocations never lose an update, and state
    and processed ids always change together.
    """

    def __init__(self, table: Any, label_delay_days: int,
                 allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS) -> None:
        self.table = table
        # Late labels reach the terminal state through transactions' own labels here;
        # the per-transaction label index would outgrow a DynamoDB item.
        self.engine = OnlineFeatureEngine(label_delay_days, track_labels=False,
                                          allowed_lateness_seconds=allowed_lateness_seconds)
        self.caches = [DynamoEntityCache(table, plan.name) for plan in self.engine.plans]
        self.engine.entities = list(self.caches)
        self.versions: dict[str, int] = {}  # item key -> version read (absent: not stored)

    def prefetch(self, rows: Iterable[dict]) -> None:
        """Read the state of every entity the rows touch (BatchGetItem, 100 keys a call)."""
        self.engine.meta = self._load_meta()
        wanted: dict[str, tuple[int, tuple]] = {}
        for row in rows:
            for index, key in enumerate(self.engine.entity_keys(row)):
                if key not in self.caches[index].loaded:
                    wanted[entity_item_key(self.caches[index].plan_name, key)] = (index, key)
        names = list(wanted)
        client = self.table.meta.client
        for start in range(0, len(names), 100):
            request = {self.table.name: {"Keys": [{"entity": n} for n in names[start:start + 100]],
                                         "ConsistentRead": True}}
            while request:
                response = client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.table.name, []):
                    index, key = wanted[item["entity"]]
                    state = EntityState.from_json(json.loads(item["state"]))
                    self.caches[index].loaded[key] = state
                    self.versions[item["entity"]] = int(item.get("version", 0))
                request = response.get("UnprocessedKeys") or None

    def changes(self) -> list[dict[str, Any]]:
        """The items :meth:`commit` would write (entities that changed, then the meta)."""
        items = []
        for cache, touched in zip(self.caches, self.engine.touched, strict=True):
            for key in sorted(touched | cache.dirty, key=repr):
                items.append({
                    "entity": entity_item_key(cache.plan_name, key),
                    "state": json.dumps(cache.loaded[key].to_json(), separators=(",", ":")),
                })
        self.engine.prune()
        meta = self.engine.meta
        items.append({
            "entity": META_KEY,
            "state": json.dumps({"watermark": meta.watermark, "floor": meta.floor,
                                 "pending_labels": meta.pending_labels}, separators=(",", ":")),
        })
        return items

    def commit(self, new_items: Iterable[dict[str, Any]] = ()) -> int:
        """Write the changes and ``new_items`` (which must not exist yet) in one transaction.

        Raises :class:`StateConflict` when another writer got there first, and
        ``ValueError`` when the batch is too big for one transaction.
        """
        from botocore.exceptions import ClientError

        puts = []
        for item in self.changes():
            version = self.versions.get(item["entity"])
            condition: dict[str, Any] = (
                {"ConditionExpression": "attribute_not_exists(entity)"} if version is None else
                {"ConditionExpression": "version = :read",
                 "ExpressionAttributeValues": {":read": version}})
            puts.append({**condition, "Item": {**item, "version": (version or 0) + 1}})
        puts += [{"ConditionExpression": "attribute_not_exists(entity)", "Item": item}
                 for item in new_items]
        if len(puts) > MAX_TRANSACTION_ITEMS:
            raise ValueError(f"{len(puts)} items in one commit; DynamoDB takes at most "
                             f"{MAX_TRANSACTION_ITEMS}: commit smaller batches")
        # The Table resource's client (de)serialises attribute values itself.
        transaction = [{"Put": {"TableName": self.table.name, **put}} for put in puts]
        try:
            self.table.meta.client.transact_write_items(TransactItems=transaction)
        except ClientError as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if exc.response["Error"]["Code"] == "TransactionCanceledException" and (
                    {"ConditionalCheckFailed", "TransactionConflict"} & set(reasons)):
                raise StateConflict(f"{self.table.name}: another invocation updated the "
                                    "state this batch read") from exc
            raise
        for item in puts:  # now at the versions just written
            self.versions[item["Item"]["entity"]] = item["Item"].get("version", 0)
        for cache, touched in zip(self.caches, self.engine.touched, strict=True):
            cache.dirty.clear()
            touched.clear()
        return len(puts)

    def _load_meta(self) -> EngineMeta:
        item = self.table.get_item(Key={"entity": META_KEY}, ConsistentRead=True).get("Item")
        if not item:
            self.versions.pop(META_KEY, None)
            return EngineMeta()
        self.versions[META_KEY] = int(item.get("version", 0))
        data = json.loads(item["state"])
        return EngineMeta(
            watermark=data["watermark"],
            floor=stored_floor(data, data["watermark"]),
            pending_labels={k: tuple(v) for k, v in data["pending_labels"].items()},
        )
