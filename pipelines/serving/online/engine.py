"""Incremental point-in-time features: one transaction at a time, in time order.

Driven entirely by :mod:`pipelines.data.features.definitions`: every ``Aggregate``
becomes a sliding frame ``[t - start, t - end]`` over its entity's past
transactions (see ``Aggregate.frame_micros``), every ``Feature`` expression is
compiled to Python by :mod:`pipelines.serving.online.compiler`. Nothing here names a
feature, so a new definition is computed online as soon as it is declared.

State per entity key (a customer, a terminal, a customer+terminal pair, ...),
per distinct frame: transactions not yet inside the frame (``pending``: newer
than ``t - end``), transactions inside it (``inside``) and running
count/sum/max accumulators. Each entity key sees its transactions in time order
(``process`` refuses one older than the key's newest), so both frame edges only
move forward: each transaction enters and leaves a frame once.
Sums are of whole cents (exact in float64), so adding and subtracting gives
exactly the batch engines' result.

Labels: a frame aggregate with ``labels_known_at_t`` counts a fraud only once
``label_known_us <= t``; frauds inside the frame whose label is not known yet
wait in ``waiting`` until it is. A late label (``apply_labels``) for a stored
transaction is re-applied wherever that transaction sits; a label for a
transaction not seen yet is kept until it arrives.

Order (see docs/CONTRACTS.md, stream scoring): an entity's features depend only
on that entity's earlier transactions, so transactions of different entities
may arrive in any order. ``process`` refuses (:class:`OutOfOrder`) a transaction
older than the newest one already processed for any of its entity keys (its
features, and those of the newer ones already scored, would differ from the
batch engines'), and one older than the stream's newest by more than the
allowed lateness: that bound is what lets :meth:`OnlineFeatureEngine.prune`
forget label-index entries, pending labels and processed ids while keeping every
transaction it can still accept exact. The engine trusts the times it is given: one
dated far ahead would move the watermark, and the floor with it, for every entity,
so the stream refuses such records before they get here
(:func:`pipelines.serving.stream.core.process_batch`, the future skew).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from pipelines.core.params import DEFAULT_ALLOWED_LATENESS_SECONDS, check_whole_seconds
from pipelines.data.features.definitions import (
    AGGREGATES,
    DEFAULT_LABEL_DELAY_DAYS,
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    FEATURES,
    Aggregate,
    label_delay_micros,
)
from pipelines.serving.online.compiler import ExpressionCompiler, build_function, referenced_columns

# The base columns every engine derives (definitions module docstring).
BASE_COLUMNS: tuple[str, ...] = (
    "ts_us",
    "amount",
    "customer_id",
    "terminal_id",
    "channel",
    "country",
    "is_cash",
    "fraud_label",
    "label_known_us",
)
NULLABLE_BASE: frozenset[str] = frozenset({"channel", "country", "is_cash"})
LABEL_BASE: frozenset[str] = frozenset({"fraud_label", "label_known_us"})
STREAM_ENTITY = "stream"  # what OutOfOrder names when the allowed lateness is exceeded
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_time(ts_us: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with ``Z`` (what reasons quote)."""
    return (_EPOCH + timedelta(microseconds=ts_us)).isoformat().replace("+00:00", "Z")


def exact_seconds(us: int) -> str:
    """Microseconds as exact decimal seconds (``1.5``, ``86400``, ``0.000001``)."""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}".rstrip("0").rstrip(".")


class OutOfOrder(ValueError):
    """A transaction too late to get exact features; nothing was changed.

    ``entity`` is the entity kind whose newest transaction it is older than
    (e.g. ``customer_id``), or :data:`STREAM_ENTITY` when it is beyond the
    allowed lateness behind the stream's newest; ``late_by_us`` is by how much.
    """

    def __init__(self, transaction_id: str, ts_us: int, entity: str, key: tuple | None,
                 newest_us: int, late_by_us: int, allowed_us: int | None = None) -> None:
        self.transaction_id = transaction_id
        self.ts_us = ts_us
        self.entity = entity
        self.key = key
        self.newest_us = newest_us
        self.late_by_us = late_by_us
        self.allowed_us = allowed_us
        super().__init__(f"transaction {transaction_id} at {iso_time(ts_us)}: {self.detail}")

    @property
    def detail(self) -> str:
        """Which entity it is late for and by how much (the dead letter's reason text)."""
        if self.entity == STREAM_ENTITY:
            return (f"{STREAM_ENTITY} late by {exact_seconds(self.late_by_us)} s, more than the "
                    f"allowed lateness of {exact_seconds(self.allowed_us or 0)} s behind the "
                    f"stream's newest transaction ({iso_time(self.newest_us)})")
        key = ",".join("null" if part is None else str(part) for part in self.key or ())
        return (f"{self.entity}={key} late by {exact_seconds(self.late_by_us)} s (its newest "
                f"transaction is at {iso_time(self.newest_us)}; features need each entity's "
                "transactions in time order)")


# --- the plan: definitions compiled once per process --------------------------------------
@dataclass(frozen=True)
class AggregatePlan:
    """One aggregate inside a frame: where its result goes and how an event contributes."""

    index: int  # position in AGGREGATES
    function: str
    labels_known_at_t: bool
    # Position of this aggregate's contribution in an event's ``values``; aggregates
    # with the same value and filter (e.g. one count in several windows) share it.
    value_index: int


@dataclass(frozen=True)
class FramePlan:
    """Aggregates of one entity kind sharing the frame ``[t - start, t - end]``."""

    position: int  # index among its entity's frames; events keep contributions per position
    start: int | None
    end: int
    aggregates: tuple[AggregatePlan, ...]
    label_sensitive: bool

    @property
    def keeps_inside(self) -> bool:
        """Unbounded frames forget events once counted, unless a label may change them."""
        return self.start is not None or self.label_sensitive


@dataclass(frozen=True)
class EntityPlan:
    columns: tuple[str, ...]
    frames: tuple[FramePlan, ...]
    event_columns: tuple[str, ...]  # base columns an event must remember

    @cached_property
    def empty_totals(self) -> tuple[tuple, ...]:
        """Each frame's accumulators before any event: 0 for count/sum, NULL for max."""
        return tuple(tuple(_empty_totals(f)) for f in self.frames)

    @property
    def name(self) -> str:
        return "+".join(self.columns)


def _columns_of(aggregate: Aggregate) -> set[str]:
    used: set[str] = set()
    for part in (aggregate.value, aggregate.filter):
        if part:
            used |= referenced_columns(part)
    unknown = used - set(BASE_COLUMNS)
    if unknown:
        raise ValueError(f"aggregate {aggregate.name} reads non-base column(s) {sorted(unknown)}")
    return used


def build_entity_plans(delay_micros: int) -> tuple[EntityPlan, ...]:
    """Group AGGREGATES by entity, then by frame; compile values and filters."""
    by_entity: dict[tuple[str, ...], dict[tuple[int | None, int], list[int]]] = {}
    for index, aggregate in enumerate(AGGREGATES):
        frame = aggregate.frame_micros(delay_micros)
        by_entity.setdefault(aggregate.entity, {}).setdefault(frame, []).append(index)
    plans = []
    for columns, frames in by_entity.items():
        frame_plans, event_columns = [], {"ts_us"}
        value_indices: dict[tuple, int] = {}
        for (start, end), indices in frames.items():
            aggregate_plans, sensitive = [], False
            for index in indices:
                aggregate = AGGREGATES[index]
                used = _columns_of(aggregate)
                event_columns |= used
                sensitive |= aggregate.labels_known_at_t or bool(used & LABEL_BASE)
                if aggregate.labels_known_at_t:
                    event_columns |= LABEL_BASE
                signature = (aggregate.value, aggregate.filter)
                value_index = value_indices.setdefault(signature, len(value_indices))
                aggregate_plans.append(
                    AggregatePlan(index, aggregate.function, aggregate.labels_known_at_t,
                                  value_index)
                )
            frame_plans.append(
                FramePlan(len(frame_plans), start, end, tuple(aggregate_plans), sensitive)
            )
        plans.append(EntityPlan(columns, tuple(frame_plans), tuple(sorted(event_columns))))
    return tuple(plans)


def build_feature_function() -> Any:
    """Generated ``(env, aggregates) -> [float | None, ...]``, in FEATURE_COLUMNS order."""
    variables = {c: f"c_{c}" for c in BASE_COLUMNS}
    variables.update({a.name: f"a_{i}" for i, a in enumerate(AGGREGATES)})
    nullable = set(NULLABLE_BASE) | {a.name for a in AGGREGATES if a.function == "max"}
    body = [f"c_{c} = env[{c!r}]" for c in BASE_COLUMNS]
    body.append(", ".join(f"a_{i}" for i in range(len(AGGREGATES))) + ", = aggregates")
    outputs = []
    for position, feature in enumerate(FEATURES):
        compiled = ExpressionCompiler(variables, nullable).compile(feature.expression)
        target = f"f_{position}"
        # The batch engines CAST every feature to DOUBLE, and later features read the cast value.
        if compiled.nullable:
            body.append(f"{target} = {compiled.source}")
            body.append(f"{target} = None if {target} is None else float({target})")
            nullable.add(feature.name)
        else:
            body.append(f"{target} = float({compiled.source})")
        variables[feature.name] = target
        outputs.append(target)
    body.append(f"return [{', '.join(outputs)}]")
    return build_function("online_features", ["env", "aggregates"], body)


# --- state -----------------------------------------------------------------------------------
class Event:
    """A past transaction as one entity's frames remember it."""

    __slots__ = ("env", "seq", "transaction_id", "ts", "values")

    def __init__(self, seq: int, transaction_id: str, ts: int, env: dict, values: list) -> None:
        self.seq = seq
        self.transaction_id = transaction_id
        self.ts = ts
        self.env = env
        self.values = values  # per aggregate of the entity: value, or None where filtered out

    def to_json(self) -> list:
        return [self.seq, self.transaction_id, self.ts, self.env, self.values]

    def __reduce__(self):  # a plain tuple pickles several times faster than slot state
        return (Event, (self.seq, self.transaction_id, self.ts, self.env, self.values))

    @classmethod
    def from_json(cls, data: list) -> Event:
        return cls(*data)


class FrameState:
    """One entity key's view of one frame: events before it, events in it, running totals."""

    __slots__ = ("inside", "pending", "totals", "waiting")

    def __init__(self, pending: deque | None = None, inside: deque | None = None,
                 totals: list | None = None, waiting: dict | None = None) -> None:
        self.pending = deque() if pending is None else pending
        self.inside = deque() if inside is None else inside
        self.totals = [] if totals is None else totals
        self.waiting = {} if waiting is None else waiting  # aggregate slot -> {seq: Event}

    def __reduce__(self):
        # Lists, not deques: pickling a deque looks its slot names up again every time.
        return (_frame_state, (list(self.pending), list(self.inside), self.totals, self.waiting))


def _frame_state(pending: list, inside: list, totals: list, waiting: dict) -> FrameState:
    return FrameState(deque(pending), deque(inside), totals, waiting)


class EntityState:
    """Everything one entity key (e.g. one customer) needs for its aggregates."""

    __slots__ = ("frames", "next_seq")

    def __init__(self, frames: list[FrameState], next_seq: int = 0) -> None:
        self.frames = frames
        self.next_seq = next_seq

    def __reduce__(self):
        return (EntityState, (self.frames, self.next_seq))

    @property
    def newest_us(self) -> int:
        """Time of the entity's newest transaction: every step appends the transaction to
        every frame's ``pending`` after moving older ones on, so it is always last there."""
        return self.frames[0].pending[-1].ts

    def to_json(self) -> dict:
        events: dict[int, Event] = {}
        frames = []
        for frame in self.frames:
            for event in (*frame.pending, *frame.inside):
                events[event.seq] = event
            frames.append(
                {
                    "pending": [e.seq for e in frame.pending],
                    "inside": [e.seq for e in frame.inside],
                    "totals": frame.totals,
                    "waiting": {str(k): sorted(v) for k, v in frame.waiting.items()},
                }
            )
        return {
            "next_seq": self.next_seq,
            "events": [e.to_json() for e in events.values()],
            "frames": frames,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EntityState:
        events = {e[0]: Event.from_json(e) for e in data["events"]}
        frames = []
        for frame in data["frames"]:
            frames.append(
                FrameState(
                    pending=deque(events[s] for s in frame["pending"]),
                    inside=deque(events[s] for s in frame["inside"]),
                    totals=list(frame["totals"]),
                    waiting={
                        int(k): {s: events[s] for s in v} for k, v in frame["waiting"].items()
                    },
                )
            )
        return cls(frames=frames, next_seq=int(data["next_seq"]))


def _empty_totals(plan: FramePlan) -> list:
    return [None if a.function == "max" else 0 for a in plan.aggregates]


def new_entity_state(plan: EntityPlan) -> EntityState:
    return EntityState([FrameState(deque(), deque(), list(t), {}) for t in plan.empty_totals])


@dataclass
class EngineMeta:
    """Engine-wide state besides the entities: the clock, labels waiting for transactions."""

    watermark: int | None = None  # the newest transaction processed (µs)
    # The lowest time still accepted when state was last pruned: what was pruned below it
    # is gone, so a raised allowed lateness cannot reach under it (None: never pruned).
    floor: int | None = None
    pending_labels: dict[str, tuple[int, int]] = field(default_factory=dict)
    # transaction id -> (ts, [(entity plan index, key)]) for label-sensitive entities
    label_index: dict[str, tuple[int, list]] = field(default_factory=dict)


# --- the engine ------------------------------------------------------------------------------
EntityMap = MutableMapping[tuple, EntityState]


class OnlineFeatureEngine:
    """Computes FEATURE_COLUMNS for one transaction at a time from an entity state store.

    ``entities`` holds one mutable mapping ``key tuple -> EntityState`` per
    entity plan (``self.plans``): plain dicts locally, DynamoDB-backed caches in
    the Lambda. ``meta`` holds the clock and labels.
    """

    feature_columns: tuple[str, ...] = FEATURE_COLUMNS
    feature_set_version: str = FEATURE_SET_VERSION

    def __init__(
        self,
        label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
        entities: list[EntityMap] | None = None,
        meta: EngineMeta | None = None,
        track_labels: bool = True,
        allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
    ) -> None:
        self.label_delay_days = label_delay_days
        self.allowed_lateness_us = (
            check_whole_seconds(allowed_lateness_seconds, "allowed_lateness_seconds")
            * 1_000_000
        )
        self.delay_micros = label_delay_micros(label_delay_days)
        self.plans = build_entity_plans(self.delay_micros)
        self._features = build_feature_function()
        self._steps = [build_entity_step(p, f"step_{i}") for i, p in enumerate(self.plans)]
        self._events = [build_event_values(p, f"event_{i}") for i, p in enumerate(self.plans)]
        # Where a late label must be able to find a stored transaction again.
        self._sensitive = [
            track_labels and any(f.label_sensitive for f in p.frames) for p in self.plans
        ]
        self.entities: list[EntityMap] = (
            [{} for _ in self.plans] if entities is None else entities
        )
        if len(self.entities) != len(self.plans):
            raise ValueError(f"expected {len(self.plans)} entity maps, got {len(self.entities)}")
        self.meta = meta or EngineMeta()
        # Keys changed since the last commit, per plan, and label-index entries added:
        # what an incremental store must write.
        self.touched: list[set] = [set() for _ in self.plans]
        self.touched_labels: set[str] = set()
        self._pass = build_entity_pass(self.plans, self._steps, self._events, self._sensitive)
        self._newest = build_newest_check(self.plans)
        self.horizon_micros = max(
            (f.start for p in self.plans for f in p.frames if f.start is not None), default=0
        )

    # --- public API ------------------------------------------------------------------------
    def base_env(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Base columns of a curated row (``ts_us`` int microseconds, labels defaulted)."""
        ts_us = int(row["ts_us"])
        label = row.get("is_fraud")
        env = {
            "ts_us": ts_us,
            "amount": float(row["amount"]),
            "customer_id": row["customer_id"],
            "terminal_id": row["terminal_id"],
            "channel": row.get("channel"),
            "country": row.get("country"),
            "is_cash": row.get("is_cash"),
            "fraud_label": int(label) if label is not None else 0,
            "label_known_us": ts_us + self.delay_micros,
        }
        if self.meta.pending_labels:
            override = self.meta.pending_labels.pop(row["transaction_id"], None)
            if override is not None:
                env["fraud_label"], env["label_known_us"] = override
        return env

    def entity_keys(self, row: Mapping[str, Any]) -> list[tuple]:
        """The state keys a transaction reads and writes, per plan (for prefetching)."""
        return [tuple(row.get(c) for c in plan.columns) for plan in self.plans]

    def process(self, row: Mapping[str, Any]) -> list[float | None]:
        """Features of ``row`` (a curated transaction with ``ts_us``), then remember it.

        Raises :class:`OutOfOrder`, changing nothing (a label waiting for the
        transaction keeps waiting), when ``row`` is older than the newest
        transaction of one of its entities or beyond the allowed lateness.
        """
        t = int(row["ts_us"])
        self.check_order(row, t)
        env = self.base_env(row)
        totals: list[Any] = [None] * len(AGGREGATES)
        self._pass(env, row["transaction_id"], t, totals, self.entities, self.touched,
                   self.meta.label_index, self.touched_labels)
        if self.meta.watermark is None or t > self.meta.watermark:
            self.meta.watermark = t
        return self._features(env, totals)

    def check_order(self, row: Mapping[str, Any], t: int) -> None:
        """Raise :class:`OutOfOrder` if ``row`` at ``t`` cannot get exact features."""
        floor = self.floor_us()
        if floor is not None and t < floor:
            assert self.meta.watermark is not None
            raise OutOfOrder(row["transaction_id"], t, STREAM_ENTITY, None,
                             self.meta.watermark, self.meta.watermark - t,
                             self.allowed_lateness_us)
        late = self._newest(row, t, self.entities)
        if late is not None:
            index, key, newest = late
            raise OutOfOrder(row["transaction_id"], t, self.plans[index].name, key, newest,
                             newest - t)

    def floor_us(self) -> int | None:
        """The oldest time a transaction may have: the allowed lateness behind the newest
        transaction, never under what the last prune kept (None before the first)."""
        watermark = self.meta.watermark
        if watermark is None:
            return None
        floor = watermark - self.allowed_lateness_us
        return floor if self.meta.floor is None else max(floor, self.meta.floor)

    def apply_labels(self, labels: Iterable[tuple[str, int, int]]) -> int:
        """Late labels ``(transaction_id, is_fraud, label_known_us)``; returns how many applied.

        A label for a transaction already stored updates it in every frame that
        holds it; one for a transaction not seen yet waits for it.
        """
        applied = 0
        for transaction_id, is_fraud, known_us in labels:
            value = (int(is_fraud), int(known_us))
            indexed = self.meta.label_index.get(transaction_id)
            if indexed is None:
                self.meta.pending_labels[transaction_id] = value
            else:
                for plan_index, key in indexed[1]:
                    entity = self.entities[plan_index].get(tuple(key))
                    if entity is not None:
                        self._relabel(plan_index, entity, transaction_id, value)
                        self.touched[plan_index].add(tuple(key))
            applied += 1
        return applied

    def prune(self) -> None:
        """Forget what no future transaction can use: old label index entries and labels.

        No transaction older than :meth:`floor_us` is accepted, and one at the floor
        looks back ``horizon``: a transaction older than ``floor - horizon`` has
        left every frame it can still be read in; a label known before then belongs
        to such a transaction (labels follow their transaction), which would now be
        refused. The floor is remembered, so a larger allowed lateness later never
        accepts a transaction whose state was pruned.
        """
        oldest = self.oldest_useful_us()
        if oldest is None:
            return
        self.meta.floor = self.floor_us()
        index = self.meta.label_index
        stale = []
        for tx, (ts, _) in index.items():  # insertion order is time order: stop early
            if ts >= oldest:
                break
            stale.append(tx)
        for tx in stale:
            del index[tx]
        pending = self.meta.pending_labels
        for tx in [tx for tx, (_, known) in pending.items() if known < oldest]:
            del pending[tx]

    def oldest_useful_us(self) -> int | None:
        """Transactions before this time have left every frame of every transaction
        still accepted (None before the first)."""
        floor = self.floor_us()
        if floor is None:
            return None
        return floor - self.horizon_micros - 1

    # --- internals -------------------------------------------------------------------------
    def _relabel(
        self, plan_index: int, entity: EntityState, transaction_id: str, value: tuple[int, int]
    ) -> None:
        """Re-label one stored event: out of the frames it counts in, update, back in."""
        plan = self.plans[plan_index]
        event, counted = None, []
        for frame_plan, frame in zip(plan.frames, entity.frames, strict=True):
            inside = next((e for e in frame.inside if e.transaction_id == transaction_id), None)
            if inside is not None and frame_plan.label_sensitive:
                _leave(frame_plan, frame, inside)
                counted.append((frame_plan, frame))
            event = event or inside or next(
                (e for e in frame.pending if e.transaction_id == transaction_id), None
            )
        if event is None:
            return
        event.env["fraud_label"], event.env["label_known_us"] = value
        event.values = self._events[plan_index](event.env)[1]
        # Counted as of the entity's own newest transaction: the next one it sees is no
        # older (other entities' newer transactions say nothing about this one's frames).
        for frame_plan, frame in counted:
            _enter(frame_plan, frame, event, entity.newest_us)


# --- the slow path: re-labelling one stored event ------------------------------------------
def _enter(plan: FramePlan, frame: FrameState, event: Event, t: int) -> None:
    for slot, aggregate in enumerate(plan.aggregates):
        value = event.values[aggregate.value_index]
        if value is None:
            continue
        if aggregate.labels_known_at_t and event.env["label_known_us"] > t:
            frame.waiting.setdefault(slot, {})[event.seq] = event
        elif aggregate.function == "max":
            current = frame.totals[slot]
            frame.totals[slot] = value if current is None else max(current, value)
        else:
            frame.totals[slot] += value


def _leave(plan: FramePlan, frame: FrameState, event: Event) -> None:
    for slot, aggregate in enumerate(plan.aggregates):
        value = event.values[aggregate.value_index]
        if value is None or aggregate.function == "max":
            continue  # a windowed max is recomputed on read
        waiting = frame.waiting.get(slot)
        if aggregate.labels_known_at_t and waiting and event.seq in waiting:
            del waiting[event.seq]
        else:
            frame.totals[slot] -= value


# --- the hot path: code generated per entity from its plan ---------------------------------
def promote_known(waiting: dict, totals: list, slot: int, value_index: int, t: int) -> None:
    """Count frauds inside the frame whose label has become known by ``t``."""
    known = [seq for seq, event in waiting.items() if event.env["label_known_us"] <= t]
    for seq in known:
        totals[slot] += waiting.pop(seq).values[value_index]


def windowed_max(inside: deque, value_index: int) -> Any:
    """A max cannot be un-added when an event leaves: recompute it from the frame."""
    present = [e.values[value_index] for e in inside if e.values[value_index] is not None]
    return max(present) if present else None


def _entry_lines(plan: FramePlan, sign: str) -> list[str]:
    """Add (``+``) or remove (``-``) event ``ev``'s contributions to the frame totals."""
    lines = ["v = ev.values"]
    for slot, aggregate in enumerate(plan.aggregates):
        lines.append(f"x = v[{aggregate.value_index}]")
        if aggregate.function == "max":
            if sign == "+":
                lines.append(f"if x is not None and (tot[{slot}] is None or x > tot[{slot}]):")
                lines.append(f"    tot[{slot}] = x")
            continue
        if aggregate.labels_known_at_t and sign == "+":
            lines += [
                "if x is not None:",
                "    if ev.env['label_known_us'] <= t:",
                f"        tot[{slot}] += x",
                "    else:",
                f"        fr.waiting.setdefault({slot}, {{}})[ev.seq] = ev",
            ]
        elif aggregate.labels_known_at_t:
            lines += [
                "if x is not None:",
                f"    w = fr.waiting.get({slot})",
                "    if w and ev.seq in w:",
                "        del w[ev.seq]",
                "    else:",
                f"        tot[{slot}] -= x",
            ]
        else:
            lines += ["if x is not None:", f"    tot[{slot}] {sign}= x"]
    return lines


def _frame_lines(plan: FramePlan) -> list[str]:
    """Move one frame's edges to ``t`` and write its aggregates into ``out``."""
    lines = [
        f"fr = frames[{plan.position}]",
        "tot = fr.totals",
        "pend = fr.pending",
        f"upper = t - {plan.end}",
        "while pend and pend[0].ts <= upper:",
        "    ev = pend.popleft()",
    ]
    lines += ["    " + line for line in _entry_lines(plan, "+")]
    if plan.keeps_inside:
        lines.append("    fr.inside.append(ev)")
    if plan.start is not None:
        lines += [
            "ins = fr.inside",
            f"lower = t - {plan.start}",
            "while ins and ins[0].ts < lower:",
            "    ev = ins.popleft()",
        ]
        lines += ["    " + line for line in _entry_lines(plan, "-")]
    for slot, aggregate in enumerate(plan.aggregates):
        if aggregate.labels_known_at_t:
            lines += [
                f"w = fr.waiting.get({slot})",
                "if w:",
                f"    promote_known(w, tot, {slot}, {aggregate.value_index}, t)",
            ]
        if aggregate.function == "max" and plan.start is not None:
            lines.append(
                f"out[{aggregate.index}] = windowed_max(fr.inside, {aggregate.value_index})"
            )
        elif aggregate.function == "sum":
            lines.append(f"out[{aggregate.index}] = float(tot[{slot}])")
        else:
            lines.append(f"out[{aggregate.index}] = tot[{slot}]")
    return lines


def build_entity_step(plan: EntityPlan, name: str) -> Any:
    """Generated ``step(entity, t, out, event)``: advance every frame of one entity to ``t``,
    read its aggregates into ``out``, then queue ``event`` (the current transaction)."""
    body = ["frames = entity.frames"]
    for frame_plan in plan.frames:
        body += _frame_lines(frame_plan)
    body += [f"frames[{f.position}].pending.append(event)" for f in plan.frames]
    function = build_function(name, ["entity", "t", "out", "event"], body)
    function.__globals__.update(promote_known=promote_known, windowed_max=windowed_max)
    return function


def _key_source(plan: EntityPlan, mapping: str) -> str:
    """Generated source of ``plan``'s state key read from ``mapping`` (a row or an env),
    as :meth:`OnlineFeatureEngine.entity_keys` reads it."""
    return "(" + "".join(f"{mapping}.get({c!r}), " for c in plan.columns) + ")"


def build_entity_pass(plans: Sequence[EntityPlan], steps: Sequence[Any], events: Sequence[Any],
                      sensitive: Sequence[bool]) -> Any:
    """Generated pass over every entity of one transaction, unrolled per plan.

    For each plan: find (or create) the entity, build the event, run the plan's
    step (advance frames, read aggregates, queue the event), note the key as
    touched and, where late labels must find the transaction, index it.
    """
    body = []
    for index, plan in enumerate(plans):
        body += [
            f"key = {_key_source(plan, 'env')}",
            f"m = entities[{index}]",
            "entity = m.get(key)",
            "if entity is None:",
            f"    entity = new_entity_state(plan_{index})",
            "    m[key] = entity",
            f"touched[{index}].add(key)",
            f"kept, values = event_{index}(env)",
            "event = Event(entity.next_seq, transaction_id, t, kept, values)",
            "entity.next_seq += 1",
            f"step_{index}(entity, t, totals, event)",
        ]
        if sensitive[index]:
            body += [
                "indexed = label_index.get(transaction_id)",
                "if indexed is None:",
                "    indexed = label_index[transaction_id] = (t, [])",
                "    touched_labels.add(transaction_id)",
                f"indexed[1].append(({index}, list(key)))",
            ]
    function = build_function(
        "entity_pass",
        ["env", "transaction_id", "t", "totals", "entities", "touched", "label_index",
         "touched_labels"],
        body,
    )
    scope = {"Event": Event, "new_entity_state": new_entity_state}
    for index, plan in enumerate(plans):
        scope.update({f"plan_{index}": plan, f"step_{index}": steps[index],
                      f"event_{index}": events[index]})
    function.__globals__.update(scope)
    return function


def build_newest_check(plans: Sequence[EntityPlan]) -> Any:
    """Generated ``(row, t, entities) -> None | (plan index, key, newest µs)``: the first
    entity of ``row`` whose newest transaction is later than ``t``. Unrolled per plan
    like the pass (it runs for every transaction); reads nothing it would create.

    A plan keyed by more columns than another (customer+terminal vs customer) holds a
    subset of its transactions, so its newest is never later: only the plans no other
    plan's columns are contained in are checked.
    """
    body = []
    for index, plan in enumerate(plans):
        if any(set(other.columns) < set(plan.columns) for other in plans):
            continue
        body += [
            f"key = {_key_source(plan, 'row')}",
            f"entity = entities[{index}].get(key)",
            "if entity is not None:",
            "    newest = entity.newest_us",
            "    if t < newest:",
            f"        return {index}, key, newest",
        ]
    body.append("return None")
    return build_function("newest_check", ["row", "t", "entities"], body)


def build_event_values(plan: EntityPlan, name: str) -> Any:
    """Generated ``(env) -> (kept columns, contributions)`` for a new event.

    ``contributions[i]`` is what the event adds to the aggregates with
    ``value_index == i`` (None where their filter excludes it): each distinct
    value/filter expression is evaluated and stored once per event.
    """
    compiler = ExpressionCompiler({c: f"env[{c!r}]" for c in BASE_COLUMNS}, NULLABLE_BASE)
    body = ["kept = {" + ", ".join(f"{c!r}: env[{c!r}]" for c in plan.event_columns) + "}"]
    emitted: set[int] = set()
    for frame_plan in plan.frames:
        for aggregate_plan in frame_plan.aggregates:
            if aggregate_plan.value_index in emitted:
                continue
            emitted.add(aggregate_plan.value_index)
            aggregate = AGGREGATES[aggregate_plan.index]
            value = "1" if aggregate.value is None else compiler.compile(aggregate.value).source
            if aggregate.filter:
                condition = compiler.compile(aggregate.filter, condition=True).source
                value = f"({value} if {condition} else None)"
            body.append(f"e_{aggregate_plan.value_index} = {value}")
    body.append("return kept, [" + ", ".join(f"e_{i}" for i in sorted(emitted)) + "]")
    return build_function(name, ["env"], body)
