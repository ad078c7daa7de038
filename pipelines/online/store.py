"""Where the online feature state lives between transactions and between runs.

* :class:`LocalStateStore`: the embedded store. The whole state (entities,
  clock, labels) plus the caller's checkpoint (e.g. the stream's processed
  transaction ids and batch sequence) is one snapshot file under
  ``<workspace>/state/online/``, written to a temporary file, fsynced and
  ``os.replace``-d: a crash leaves the previous snapshot intact, so a restart
  resumes exactly from the last commit. A lock file keeps two writers apart.
* :class:`DynamoStateStore`: one DynamoDB item per entity key (the Lambda's
  ``STATE_TABLE``, hash key ``entity``), read for a batch's keys and written
  back when changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.features.definitions import FEATURE_SET_VERSION
from pipelines.online.engine import EngineMeta, EntityState, OnlineFeatureEngine
from pipelines.workspace import Workspace

SNAPSHOT_FILE = "snapshot.pickle"
LOCK_FILE = ".lock"
SNAPSHOT_FORMAT = 1


class StateError(Exception):
    """The stored state cannot be used as it is; the message says what to do."""


def online_dir(ws: Workspace) -> Path:
    return ws.state_dir / "online"


@dataclass
class Snapshot:
    """What one commit stores: the engine's state and the caller's checkpoint."""

    label_delay_days: int
    entities: list[dict]
    meta: EngineMeta
    checkpoint: dict[str, Any] = field(default_factory=dict)
    feature_set_version: str = FEATURE_SET_VERSION
    format: int = SNAPSHOT_FORMAT


class LocalStateStore:
    """The embedded online state: one atomically replaced snapshot per commit."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / SNAPSHOT_FILE

    @classmethod
    def for_workspace(cls, ws: Workspace) -> LocalStateStore:
        return cls(online_dir(ws))

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

    def load(self, label_delay_days: int) -> tuple[OnlineFeatureEngine, dict[str, Any]]:
        """The engine as of the last commit (fresh if none) and that commit's checkpoint."""
        if not self.path.exists():
            return OnlineFeatureEngine(label_delay_days), {}
        try:
            with self.path.open("rb") as handle:
                snapshot: Snapshot = pickle.load(handle)  # noqa: S301 - our own workspace file
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise StateError(
                f"{self.path} is unreadable ({exc}); restore it from a backup or delete "
                "the online state directory to rebuild it by replaying transactions"
            ) from exc
        if snapshot.feature_set_version != FEATURE_SET_VERSION:
            raise StateError(
                f"{self.path} holds state for feature set {snapshot.feature_set_version}, but "
                f"the definitions are now {FEATURE_SET_VERSION}: delete {self.directory} and "
                "replay recent transactions to rebuild the state"
            )
        if snapshot.label_delay_days != label_delay_days:
            raise StateError(
                f"{self.path} was built with a {snapshot.label_delay_days}-day label delay but "
                f"the model uses {label_delay_days}; rebuild the state for this model"
            )
        engine = OnlineFeatureEngine(label_delay_days, snapshot.entities, snapshot.meta)
        return engine, snapshot.checkpoint

    def commit(self, engine: OnlineFeatureEngine, checkpoint: dict[str, Any]) -> None:
        """Write the state and checkpoint together, atomically and durably."""
        engine.prune()
        snapshot = Snapshot(
            label_delay_days=engine.label_delay_days,
            entities=engine.entities,
            meta=engine.meta,
            checkpoint=checkpoint,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{SNAPSHOT_FILE}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as handle:
                pickle.dump(snapshot, handle, protocol=pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class DynamoStateStore:
    """Online state in DynamoDB: an item per entity key plus one for the engine meta."""

    def __init__(self, table: Any, label_delay_days: int) -> None:
        self.table = table
        # Late labels reach the terminal state through transactions' own labels here;
        # the per-transaction label index would outgrow a DynamoDB item.
        self.engine = OnlineFeatureEngine(label_delay_days, track_labels=False)
        self.caches = [DynamoEntityCache(table, plan.name) for plan in self.engine.plans]
        self.engine.entities = list(self.caches)

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
            request = {self.table.name: {"Keys": [{"entity": n} for n in names[start:start + 100]]}}
            while request:
                response = client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.table.name, []):
                    index, key = wanted[item["entity"]]
                    state = EntityState.from_json(json.loads(item["state"]))
                    self.caches[index].loaded[key] = state
                request = response.get("UnprocessedKeys") or None

    def flush(self) -> int:
        """Write back every changed entity and the meta item; returns items written."""
        written = 0
        for cache in self.caches:
            for key in sorted(cache.dirty, key=repr):
                state = cache.loaded[key]
                self.table.put_item(
                    Item={
                        "entity": entity_item_key(cache.plan_name, key),
                        "state": json.dumps(state.to_json(), separators=(",", ":")),
                    }
                )
                written += 1
            cache.dirty.clear()
        self.engine.prune()
        meta = self.engine.meta
        self.table.put_item(
            Item={
                "entity": META_KEY,
                "state": json.dumps(
                    {"watermark": meta.watermark, "pending_labels": meta.pending_labels},
                    separators=(",", ":"),
                ),
            }
        )
        return written + 1

    def _load_meta(self) -> EngineMeta:
        item = self.table.get_item(Key={"entity": META_KEY}).get("Item")
        if not item:
            return EngineMeta()
        data = json.loads(item["state"])
        return EngineMeta(
            watermark=data["watermark"],
            pending_labels={k: tuple(v) for k, v in data["pending_labels"].items()},
        )
