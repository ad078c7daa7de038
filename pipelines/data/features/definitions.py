"""The feature set, written once as data; every engine compiles these definitions.

Two kinds of definition:

* :class:`Aggregate`: ``count``/``sum``/``max`` of a value over one entity's
  transactions in a time frame *relative to the current transaction* at time t.
  The frame is ``[t - lag - window, t - lag)`` (``window=None``: all history
  before ``t - lag``). The upper bound is exclusive, so an aggregate only ever
  sees transactions strictly before the current one (or before ``t - lag``).
* :class:`Feature`: a float64 column given as a SQL expression over the base
  columns (below), the aggregates and earlier features. The expressions use the
  common subset of DuckDB SQL and Spark SQL (``CASE``, ``coalesce``, ``ln``,
  ``sqrt``, ``greatest``, ``sin``/``cos``/``pi``, ``floor``, arithmetic), so
  both engines evaluate the very same text; tests prove they agree.

Point-in-time rules (what "available at the moment of the transaction" means):

* Customer and terminal *activity* features count the current transaction
  itself plus the entity's transactions strictly before it: ``count + 1``,
  ``(sum + amount) / (count + 1)``. Two transactions of one entity with the
  same timestamp never see each other, so the result does not depend on the
  order in which simultaneous transactions arrive (an online scorer processing
  one transaction at a time reproduces it exactly).
* Terminal *fraud risk* uses only labels known at t: the terminal's
  transactions in ``[t - delay - w, t - delay)`` (``delay`` = label delay,
  default 7 days), and among them only frauds whose ``label_known_at <= t``.
  Without a labels table ``label_known_at = timestamp + delay``, so the frame
  alone guarantees it; explicit late labels are subtracted by the engines.
* Calendar features use the UTC clock of the timestamp.

Online (one transaction at a time): keep, per entity key, the history of
``(ts_us, value, filter result, label_known_us)`` back to the widest frame; each
aggregate is a scan of that history over ``[t - start, t - end]``, and each
feature expression is then evaluated on one row. Counts are integers and
amount sums are whole cents (see ``AMOUNT_CENTS``), so the results are
bit-identical to the batch engines, whatever the order of additions.

Base columns every engine derives before aggregating (and nothing else):
``ts_us`` (BIGINT epoch microseconds of ``timestamp``), ``amount``,
``customer_id``, ``terminal_id``, ``channel``, ``country``, ``is_cash``,
``fraud_label`` (0/1: explicit label, else curated ``is_fraud``, else 0) and
``label_known_us`` (BIGINT epoch microseconds when that label became known).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

# The default delay is defined in core.params; re-exported for the feature engines.
from pipelines.core.params import DEFAULT_LABEL_DELAY_DAYS as DEFAULT_LABEL_DELAY_DAYS
from pipelines.core.params import (
    ParameterError,
    check_feature_set_version,
    check_label_delay_days,
)
from pipelines.core.schema import CHANNELS, CURATED_SCHEMA, ENTITY_COLUMN

TERMINAL_COLUMN = "terminal_id"
# Seconds reported when a customer has no earlier transaction (about 31.7 years):
# larger than any real gap, so trees split it off cleanly.
NO_PREVIOUS_TX_SECONDS = 1e9

MICROS_PER_SECOND = 1_000_000
MICROS_PER_HOUR = 3600 * MICROS_PER_SECOND
MICROS_PER_DAY = 24 * MICROS_PER_HOUR

AggregateFunction = Literal["count", "sum", "max"]
Lag = Literal["none", "label_delay"]


def label_delay_micros(label_delay_days: int) -> int:
    """Validate the label delay (whole days >= 0) and convert it to microseconds."""
    return check_label_delay_days(label_delay_days) * MICROS_PER_DAY


@dataclass(frozen=True)
class Window:
    """A named time span, e.g. ``1d``; stored in microseconds so it is exact."""

    name: str
    micros: int


@dataclass(frozen=True)
class Aggregate:
    """An aggregate over one entity's past transactions (see the module docstring).

    ``value`` is a SQL expression over base columns (``None`` for ``count``);
    ``filter`` restricts the rows counted; ``lag="label_delay"`` shifts the frame
    back by the label delay; ``labels_known_at_t`` keeps only rows whose label
    was known at the current transaction's time.
    """

    name: str
    function: AggregateFunction
    entity: tuple[str, ...]
    window: Window | None
    value: str | None = None
    filter: str | None = None
    lag: Lag = "none"
    labels_known_at_t: bool = False

    def frame_micros(self, label_delay_micros: int) -> tuple[int | None, int]:
        """``(start, end)`` offsets before t: the frame is ``[t - start, t - end]``.

        ``start`` is ``None`` for unbounded history; ``end`` is at least 1 µs,
        which makes the frame's upper bound exclusive of t (or of t - lag).
        """
        lag = label_delay_micros if self.lag == "label_delay" else 0
        start = None if self.window is None else lag + self.window.micros
        return start, lag + 1


@dataclass(frozen=True)
class Feature:
    """One float64 output column: a SQL expression understood by DuckDB and Spark."""

    name: str
    expression: str
    description: str


HOUR = Window("1h", MICROS_PER_HOUR)
DAY = Window("1d", MICROS_PER_DAY)
WEEK = Window("7d", 7 * MICROS_PER_DAY)
MONTH = Window("30d", 30 * MICROS_PER_DAY)

CUSTOMER_WINDOWS: tuple[Window, ...] = (HOUR, DAY, WEEK, MONTH)
TERMINAL_WINDOWS: tuple[Window, ...] = (DAY, WEEK, MONTH)
CUSTOMER = (ENTITY_COLUMN,)
TERMINAL = (TERMINAL_COLUMN,)
FRAUD = "fraud_label = 1"
# Amounts are summed in whole cents held in float64. A floating-point window sum
# of arbitrary amounts depends on the order of additions, which differs between
# engines, between runs over different data and in an online store; sums of
# integers below 2**53 are exact in any order (squares: up to ~$900k per
# amount), so every engine gets the same bits. Decimal sums would be exact too
# but are 4x slower in DuckDB windows.
AMOUNT_CENTS = "round(amount * 100)"


def _customer_aggregates() -> list[Aggregate]:
    aggregates: list[Aggregate] = []
    for w in CUSTOMER_WINDOWS:
        aggregates += [
            Aggregate(f"cust_prior_count_{w.name}", "count", CUSTOMER, w),
            Aggregate(f"cust_prior_cents_sum_{w.name}", "sum", CUSTOMER, w, value=AMOUNT_CENTS),
        ]
    aggregates += [
        Aggregate(
            "cust_prior_cents_sqsum_30d",
            "sum",
            CUSTOMER,
            MONTH,
            value=f"{AMOUNT_CENTS} * {AMOUNT_CENTS}",
        ),
        Aggregate("cust_prev_ts_us", "max", CUSTOMER, None, value="ts_us"),
        Aggregate("cust_terminal_prior_count", "count", (*CUSTOMER, TERMINAL_COLUMN), None),
        Aggregate("cust_channel_prior_count", "count", (*CUSTOMER, "channel"), None),
        Aggregate("cust_country_prior_count", "count", (*CUSTOMER, "country"), None),
    ]
    return aggregates


def _terminal_aggregates() -> list[Aggregate]:
    aggregates: list[Aggregate] = []
    for w in TERMINAL_WINDOWS:
        aggregates += [
            Aggregate(f"term_prior_count_{w.name}", "count", TERMINAL, w),
            Aggregate(f"term_delayed_count_{w.name}", "count", TERMINAL, w, lag="label_delay"),
            Aggregate(
                f"term_delayed_known_frauds_{w.name}",
                "count",
                TERMINAL,
                w,
                filter=FRAUD,
                lag="label_delay",
                labels_known_at_t=True,
            ),
        ]
    return aggregates


AGGREGATES: tuple[Aggregate, ...] = tuple(_customer_aggregates() + _terminal_aggregates())


def _customer_features() -> list[Feature]:
    features: list[Feature] = []
    for w in CUSTOMER_WINDOWS:
        n = w.name
        features += [
            Feature(
                f"cust_tx_count_{n}",
                f"cust_prior_count_{n} + 1",
                f"customer's transactions in the last {n}, this one included",
            ),
            Feature(
                f"cust_avg_amount_{n}",
                f"(cust_prior_cents_sum_{n} / 100 + amount) / (cust_prior_count_{n} + 1)",
                f"customer's mean amount over the last {n}, this one included",
            ),
        ]
    features += [
        Feature(
            "amount_to_cust_avg_30d",
            "amount / cust_avg_amount_30d",
            "amount relative to the customer's 30-day mean",
        ),
        Feature(
            "amount_zscore_30d",
            "(amount - cust_avg_amount_30d) / greatest(sqrt(greatest("
            "(cust_prior_cents_sqsum_30d / 10000 + amount * amount) / cust_tx_count_30d"
            " - cust_avg_amount_30d * cust_avg_amount_30d, 0)), 1)",
            "deviation from the 30-day mean in 30-day standard deviations; the "
            "deviation is floored at 1 currency unit so constant spenders stay finite",
        ),
        Feature("log_amount", "ln(1 + amount)", "natural log of 1 + amount"),
        Feature(
            "seconds_since_prev_tx",
            "coalesce(CAST(ts_us - cust_prev_ts_us AS DOUBLE) / 1e6, "
            f"CAST({NO_PREVIOUS_TX_SECONDS!r} AS DOUBLE))",
            "seconds since the customer's previous (strictly earlier) transaction; "
            "1e9 when there is none",
        ),
        Feature(
            "new_terminal_for_customer",
            "CASE WHEN cust_terminal_prior_count = 0 THEN 1 ELSE 0 END",
            "1 when the customer never used this terminal before",
        ),
        Feature(
            "new_channel_for_customer",
            "CASE WHEN channel IS NULL THEN 0 WHEN cust_channel_prior_count = 0 THEN 1 ELSE 0 END",
            "1 when the customer never used this channel before (0 when unknown)",
        ),
        Feature(
            "new_country_for_customer",
            "CASE WHEN country IS NULL THEN 0 WHEN cust_country_prior_count = 0 THEN 1 ELSE 0 END",
            "1 when the customer never transacted in this country before (0 when unknown)",
        ),
    ]
    return features


def _row_features() -> list[Feature]:
    features = [
        Feature(
            "hour_of_day",
            f"floor((ts_us % {MICROS_PER_DAY}) / {MICROS_PER_HOUR})",
            "UTC hour 0-23",
        ),
        Feature("hour_sin", "sin(2 * pi() * hour_of_day / 24)", "hour on the unit circle"),
        Feature("hour_cos", "cos(2 * pi() * hour_of_day / 24)", "hour on the unit circle"),
        Feature(
            "day_of_week",
            # 1970-01-01 was a Thursday, hence the +3 for Monday = 0.
            f"(floor(ts_us / {MICROS_PER_DAY}) + 3) % 7",
            "UTC day of week, Monday = 0",
        ),
        Feature("is_weekend", "CASE WHEN day_of_week >= 5 THEN 1 ELSE 0 END", "Saturday/Sunday"),
        Feature("is_night", "CASE WHEN hour_of_day < 6 THEN 1 ELSE 0 END", "00:00-05:59 UTC"),
        Feature("is_cash_tx", "CASE WHEN is_cash THEN 1 ELSE 0 END", "cash withdrawal/payment"),
    ]
    features += [
        Feature(f"channel_{c}", f"CASE WHEN channel = '{c}' THEN 1 ELSE 0 END", f"channel {c}")
        for c in CHANNELS
    ]
    return features


def _terminal_features() -> list[Feature]:
    features: list[Feature] = []
    for w in TERMINAL_WINDOWS:
        n = w.name
        features += [
            Feature(
                f"term_tx_count_{n}",
                f"term_prior_count_{n} + 1",
                f"terminal's transactions in the last {n}, this one included",
            ),
            Feature(
                f"term_fraud_count_{n}",
                f"term_delayed_known_frauds_{n}",
                f"known frauds at the terminal in [t - delay - {n}, t - delay)",
            ),
            Feature(
                f"term_fraud_rate_{n}",
                f"CASE WHEN term_delayed_count_{n} = 0 THEN 0 ELSE "
                f"CAST(term_delayed_known_frauds_{n} AS DOUBLE) / term_delayed_count_{n} END",
                f"known frauds / transactions at the terminal in [t - delay - {n}, t - delay)",
            ),
        ]
    return features


FEATURES: tuple[Feature, ...] = tuple(_customer_features() + _row_features() + _terminal_features())
FEATURE_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Columns written next to the features (docs/CONTRACTS.md "Feature table").
ID_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    ENTITY_COLUMN,
    TERMINAL_COLUMN,
    "amount",
)
LABEL_COLUMN = "is_fraud"
PARTITION_COLUMN = "dt"
# Columns a labels table must have (feedback that arrives after the fact).
LABELS_COLUMNS: tuple[str, ...] = ("transaction_id", "is_fraud", "label_known_at")


def _fingerprint() -> str:
    """Hash of every definition: any change to the feature set changes the version."""
    payload = {
        "aggregates": [asdict(a) for a in AGGREGATES],
        "features": [asdict(f) for f in FEATURES],
        "no_previous_tx_seconds": NO_PREVIOUS_TX_SECONDS,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


FEATURE_SET_VERSION: str = _fingerprint()


def require_current_feature_set(version: object, where: str) -> str:
    """``version`` if it is these definitions' version, else an error saying what to do.

    Online features are computed by the code that runs, so a model trained on
    another feature set version would be fed columns that mean something else.
    """
    recorded = check_feature_set_version(version, f"{where} feature_set_version")
    if recorded != FEATURE_SET_VERSION:
        raise ParameterError(
            f"{where} was trained on feature set {recorded}, but this code computes feature "
            f"set {FEATURE_SET_VERSION}: deploy a model trained with the current definitions "
            "(rebuild the features and re-run the pipeline) or deploy the code it was trained with"
        )
    return recorded


def _check_definitions() -> None:
    """Fail at import on an inconsistent definition rather than deep inside an engine."""
    names = [a.name for a in AGGREGATES] + list(FEATURE_COLUMNS)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"feature definitions: duplicate names {duplicates}")
    for a in AGGREGATES:
        if (a.function == "count") != (a.value is None):
            raise ValueError(f"aggregate {a.name}: count takes no value, sum/max need one")
        if a.labels_known_at_t and (
            a.function == "max" or a.lag != "label_delay" or a.window is None
        ):
            raise ValueError(
                f"aggregate {a.name}: labels_known_at_t needs count/sum, a window and the lag"
            )


_check_definitions()


# --- which features a feature table holds -------------------------------------------
# Inputs a file may not provide (ids and optional columns) that some features need.
OPTIONAL_FEATURE_INPUTS: tuple[str, ...] = (
    ENTITY_COLUMN, TERMINAL_COLUMN, "channel", "country", "is_cash"
)
USER_FEATURE_KINDS: tuple[str, ...] = ("numeric", "categorical")
USER_GROUP = "user columns"
_INPUT_GROUP_NAMES = {ENTITY_COLUMN: "customer", TERMINAL_COLUMN: "terminal", "is_cash": "cash"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _referenced(sql: str | None) -> set[str]:
    """Names an expression mentions (string literals such as ``'ecommerce'`` excluded)."""
    return set(_IDENTIFIER.findall(_STRING_LITERAL.sub("", sql or "")))


def _feature_needs() -> dict[str, frozenset[str]]:
    """Per feature, the optional inputs it cannot be computed without, found by following
    its expression through the aggregates (their entity, value and filter) and earlier
    features it names. Derived, so a new definition is classified without being listed."""
    optional = set(OPTIONAL_FEATURE_INPUTS)
    needs: dict[str, frozenset[str]] = {
        a.name: frozenset((set(a.entity) | _referenced(a.value) | _referenced(a.filter))
                          & optional)
        for a in AGGREGATES
    }
    for feature in FEATURES:
        names = _referenced(feature.expression)
        inherited = set().union(*(needs[n] for n in names if n in needs))
        needs[feature.name] = frozenset(inherited | (names & optional))
    return {name: needs[name] for name in FEATURE_COLUMNS}


FEATURE_NEEDS: dict[str, frozenset[str]] = _feature_needs()


def group_name(needs: frozenset[str]) -> str:
    """``customer``, ``terminal``, ``customer x terminal``, ... (``amount and time``: none)."""
    if not needs:
        return "amount and time"
    order = {name: i for i, name in enumerate(OPTIONAL_FEATURE_INPUTS)}
    return " x ".join(_INPUT_GROUP_NAMES.get(n, n) for n in sorted(needs, key=order.__getitem__))


class FeatureLayoutError(ValueError):
    """The user's feature columns cannot be used as declared."""


@dataclass(frozen=True)
class FeatureLayout:
    """The features one feature table holds, decided from its input data.

    ``inputs``: the optional inputs that have values (a file without customer
    ids has none). A definition needing an input that is absent is left out of
    the model (its column is NULL in the table), not fed as a constant.
    ``user_features``: the user's own columns declared as features in the column
    map, ``(name, kind)`` with kind ``numeric`` or ``categorical``; they pass
    through the feature table unchanged and follow the definitions.
    """

    inputs: frozenset[str] = frozenset(OPTIONAL_FEATURE_INPUTS)
    user_features: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        taken = {*FEATURE_COLUMNS, *(a.name for a in AGGREGATES), *ID_COLUMNS, LABEL_COLUMN,
                 PARTITION_COLUMN, "ts_us", "ts_utc", "fraud_label", "label_known_us"}
        for name, kind in self.user_features:
            if kind not in USER_FEATURE_KINDS:
                raise FeatureLayoutError(
                    f"user feature {name!r}: kind {kind!r} is not one of {USER_FEATURE_KINDS}")
            if name in taken:
                raise FeatureLayoutError(
                    f"user feature {name!r} has the name of a built-in column or feature; "
                    "rename it in the file (or map it to another name) and ingest again")

    @property
    def definition_features(self) -> tuple[str, ...]:
        """The built-in features computable from the inputs present, in definition order."""
        return tuple(n for n in FEATURE_COLUMNS if FEATURE_NEEDS[n] <= self.inputs)

    @property
    def left_out(self) -> tuple[str, ...]:
        return tuple(n for n in FEATURE_COLUMNS if not FEATURE_NEEDS[n] <= self.inputs)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.definition_features + tuple(name for name, _ in self.user_features)

    @property
    def categorical_features(self) -> tuple[str, ...]:
        return tuple(name for name, kind in self.user_features if kind == "categorical")

    def groups(self) -> dict[str, list[str]]:
        """The feature groups used, each with its columns (built-in groups, then user columns)."""
        groups: dict[str, list[str]] = {}
        for name in self.definition_features:
            groups.setdefault(group_name(FEATURE_NEEDS[name]), []).append(name)
        if self.user_features:
            groups[USER_GROUP] = [name for name, _ in self.user_features]
        return groups

    def left_out_groups(self) -> dict[str, str]:
        """The groups left out, each with why (the inputs without values)."""
        missing: dict[str, str] = {}
        for name in self.left_out:
            absent = sorted(FEATURE_NEEDS[name] - self.inputs)
            missing.setdefault(group_name(FEATURE_NEEDS[name]), f"no {' or '.join(absent)} values")
        return missing


FULL_LAYOUT = FeatureLayout()
# Curated columns that are not user features (docs/CONTRACTS.md "Curated transactions").
CANONICAL_CURATED_COLUMNS: frozenset[str] = frozenset(CURATED_SCHEMA.names) | {PARTITION_COLUMN}


def layout_of(column_types: Mapping[str, str], with_values: Iterable[str]) -> FeatureLayout:
    """The layout of curated data with these ``{column: type}`` (Arrow or SQL type names),
    ``with_values`` naming the columns holding at least one non-null value.

    Every curated column outside the canonical schema is a user feature the column
    map declared; ingest stores numeric ones as float64 and categorical ones as text.
    """
    user = []
    for name, type_name in column_types.items():
        if name in CANONICAL_CURATED_COLUMNS:
            continue
        kind = user_feature_kind(type_name)
        if kind is None:
            raise FeatureLayoutError(
                f"curated column {name!r} has type {type_name}: user feature columns must be "
                "numbers or text (declare them feature:numeric or feature:categorical)")
        user.append((name, kind))
    return FeatureLayout(frozenset(with_values) & frozenset(OPTIONAL_FEATURE_INPUTS), tuple(user))


def user_feature_kind(type_name: str) -> str | None:
    """``numeric``/``categorical`` for a curated column's type (Arrow or SQL name), else None:
    ingest stores declared user features as float64 or text."""
    lowered = type_name.lower()
    if lowered in ("string", "large_string", "varchar", "utf8"):
        return "categorical"
    if lowered in ("double", "float", "float64", "float32", "bigint", "int64", "integer",
                   "int32", "boolean", "bool"):
        return "numeric"
    return None


def feature_set_manifest(
    label_delay_days: int, layout: FeatureLayout = FULL_LAYOUT
) -> dict[str, object]:
    """The ``_feature_set.json`` document (docs/CONTRACTS.md)."""
    return {
        "version": FEATURE_SET_VERSION,
        "feature_columns": list(layout.feature_columns),
        "label_column": LABEL_COLUMN,
        "id_columns": list(ID_COLUMNS),
        "partition_column": PARTITION_COLUMN,
        "label_delay_days": check_label_delay_days(label_delay_days),
        "feature_groups": layout.groups(),
        "left_out_groups": layout.left_out_groups(),
        "user_features": dict(layout.user_features),
        "categorical_features": list(layout.categorical_features),
    }
