"""Chronological train / validation / test split of the feature table.

Runs inside a SageMaker Processing container (or locally via ``--base-dir``).
It ships as the ``processing/`` folder without the ``pipelines`` package, so it
uses only numpy, pandas and pyarrow.

Input (docs/CONTRACTS.md, "Feature table"):
    <base>/processing/input/features/dt=YYYY-MM-DD/*.parquet
    <base>/processing/input/features/_feature_set.json

Output:
    <base>/processing/{train,validation,test}/data.parquet
    <base>/processing/{train,validation,test}/feature_set.json

The split follows the fraud-detection protocol of Le Borgne et al.,
"Reproducible Machine Learning for Credit Card Fraud Detection" (ch. 5):
fraud labels arrive only after an investigation delay, so when a model is
deployed the labels of the last ``label_delay_days`` days are unknown. The
test window therefore starts ``label_delay_days`` after the last labelled day
used for fitting, and those gap days are never used::

    | train | (validation gap) | validation | label-delay gap | test |

Validation gap: 0 days by default. The validation window only drives early
stopping (the number of boosting rounds); the generalisation estimate comes
from the test window, which does honour the delay. A gap there would discard
the most recent labelled days, the ones closest to the test period. Pass
``--validation-gap-days`` (e.g. the label delay) to make validation mimic
deployment too.

Label delay: decided by the feature build, which records it as
``label_delay_days`` in ``_feature_set.json`` (its terminal-risk features
already respect that delay). This script takes it from there. The pipeline
parameter ``LabelDelayDays`` defaults to -1, "the manifest's"; an explicit
``--label-delay-days`` must equal the manifest's value, else the run stops:
a split with another delay than the features would leak labels (shorter) or
waste data (longer) without anyone noticing. Rebuild the features with
``fraudops features --label-delay-days N`` to change it.

Window defaults (all days are UTC calendar days):
    * ``--train-start``: the earliest day in the data (also when given as "").
    * ``--*-days`` take whole days (``7`` or ``7d``) or hours (``36h``); 0 or ""
      means "derive", as the pipeline parameters do. When a window is given in
      hours that are not whole days, every window is laid out in whole hours.
    * ``--test-days`` and ``--validation-days``: 7 (a week covers the weekly
      seasonality of card spending), shrunk to a quarter of the usable days on
      short histories.
    * ``--train-days``: unset (or 0) means "every day from --train-start up to
      the validation window" and the test window is the last days of the data.
      Set, the windows are laid out forwards from --train-start (for
      backtesting an older period).

Short histories: when no window is given and the data spans too little time
for these day windows (e.g. two days of data with a 7-day label delay), the
split falls back to a chronological split by shares of the transactions,
60/20/20 train/validation/test, with the label-delay gap scaled down by the
factor the data falls short of the default layout (``plan_by_fractions``). The fallback
is printed and recorded in the split (``method``, ``note``,
``label_delay_gap_hours``); explicit windows that do not fit still fail,
naming the dates and the flag to change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FEATURE_SET_FILE = "_feature_set.json"
OUTPUT_FEATURE_SET_FILE = "feature_set.json"
DATA_FILE = "data.parquet"
# Beside the test split: when each card's first fraud happened (evaluation removes cards
# already known to be compromised from card precision@k).
KNOWN_FRAUDS_FILE = "known_frauds.parquet"
CARD_COLUMN = "customer_id"
SPLIT_NAMES = ("train", "validation", "test")
# Columns evaluation and scoring need besides the features and the label.
REQUIRED_ID_COLUMNS = ("transaction_id", "customer_id", "timestamp")
DEFAULT_WINDOW_DAYS = 7
# Categorical user features: a value needs this many train/validation rows for its own code.
MIN_CATEGORY_ROWS = 5
MAX_CATEGORIES = 1000
HOURS_PER_DAY = 24
# The short-history fallback: shares of the time span for train, validation and test.
FALLBACK_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
# --label-delay-days value meaning "the feature manifest's" (the pipeline parameter's
# default, pipelines.core.params.LABEL_DELAY_FROM_FEATURES: this script cannot import it).
LABEL_DELAY_FROM_FEATURES = -1
# Partition files read at once (pyarrow decodes each file's columns in threads too).
READ_THREADS = 2


def rebuild_hint(days: object = "N") -> str:
    """The command that rebuilds the feature table with another label delay."""
    return f"fraudops features --label-delay-days {days}"


class SplitError(Exception):
    """A user-fixable problem with the input data or the window arguments."""


@dataclass(frozen=True)
class Window:
    """A span of UTC time ``[start, end)``; day windows start and end at midnight."""

    name: str
    start: datetime  # naive UTC
    end: datetime  # exclusive

    @property
    def hours(self) -> float:
        return (self.end - self.start) / timedelta(hours=1)

    @property
    def days(self) -> int | float:
        """Whole days for day windows, else a fraction (two decimals)."""
        days = self.hours / HOURS_PER_DAY
        return int(days) if days.is_integer() else round(days, 2)

    @property
    def whole_days(self) -> bool:
        return self.start == _midnight(self.start) and self.end == _midnight(self.end)

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    def span(self) -> str:
        """``2026-01-01..2026-01-05 (5 days)``, or exact times for windows not in whole days."""
        if self.whole_days:
            return f"{self.first_day}..{self.last_day} ({self.days} days)"
        return f"{self.start:%Y-%m-%d %H:%M}..{self.end:%Y-%m-%d %H:%M} ({self.hours:.3g} hours)"

    def describe(self) -> str:
        return f"{self.name} {self.span()}"

    def to_json(self) -> dict:
        """``start``/``end`` are the first and last UTC day touched (inclusive);
        ``start_time``/``end_time`` the exact bounds (end exclusive)."""
        return {
            "start": self.first_day.isoformat(),
            "end": self.last_day.isoformat(),
            "days": self.days,
            "hours": self.hours,
            "start_time": self.start.isoformat(),
            "end_time": self.end.isoformat(),
            "span": self.span(),
        }


@dataclass(frozen=True)
class WindowPlan:
    """The three windows plus the gaps between them.

    ``label_delay_days`` is the delay the features were built with (carried to
    the model package); ``delay_gap`` is the time actually left out before the
    test window: the same delay, or less when the split fell back to fractions.
    """

    train: Window
    validation: Window
    test: Window
    validation_gap_days: int
    label_delay_days: int
    delay_gap: timedelta
    method: str = "windows"  # or "fractions" (the short-history fallback)
    note: str = ""  # why the fallback was taken and what it did, printed and recorded

    def windows(self) -> tuple[Window, Window, Window]:
        return (self.train, self.validation, self.test)


@dataclass(frozen=True)
class WindowArgs:
    """The window arguments as given on the command line, in hours (None = derive)."""

    train_start: date | None
    train_hours: int | None
    validation_hours: int | None
    test_hours: int | None
    label_delay_days: int
    validation_gap_days: int

    @property
    def derived(self) -> bool:
        """No window was given: the split may fall back to fractions on short data."""
        return not (self.train_start or self.train_hours or self.validation_hours
                    or self.test_hours)

    @property
    def unit_hours(self) -> int:
        """Day windows unless a window is given in hours that are not whole days."""
        given = (self.train_hours, self.validation_hours, self.test_hours)
        return HOURS_PER_DAY if all(h % HOURS_PER_DAY == 0 for h in given if h) else 1


# --- reading -----------------------------------------------------------------


def load_feature_set(features_dir: Path) -> dict:
    """Read and check ``_feature_set.json`` (feature columns, label, id columns, delay)."""
    path = features_dir / FEATURE_SET_FILE
    if not path.is_file():
        raise SplitError(
            f"{path} not found: the feature table directory must contain {FEATURE_SET_FILE} "
            "(written by the features job). Run the features job first."
        )
    try:
        feature_set = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SplitError(f"{path} is not valid JSON ({exc}); re-run the features job.") from exc
    missing = [
        key for key in ("feature_columns", "label_column", "id_columns") if key not in feature_set
    ]
    if missing:
        raise SplitError(f"{path} lacks {missing}; re-run the features job.")
    if not feature_set["feature_columns"]:
        raise SplitError(f"{path} lists no feature_columns; re-run the features job.")
    delay = feature_set.get("label_delay_days")
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise SplitError(
            f"{path} records label_delay_days {delay!r}, not a whole number of days >= 0; "
            f"rebuild the features with `{rebuild_hint()}`."
        )
    return feature_set


def label_delay(requested: int | None, feature_set: dict, features_dir: Path) -> int:
    """The features' label delay; a different explicit request is an error naming both."""
    built = feature_set["label_delay_days"]
    if requested is None or requested in (LABEL_DELAY_FROM_FEATURES, built):
        return built
    raise SplitError(
        f"the pipeline was asked for a label delay of {requested} days (LabelDelayDays / "
        f"--label-delay-days), but the features in {features_dir} were built with "
        f"{built} days ({FEATURE_SET_FILE} label_delay_days). Either rebuild the features "
        f"with `{rebuild_hint(requested)}`, or run the pipeline with "
        f"LabelDelayDays {built} (or leave it at its default, {LABEL_DELAY_FROM_FEATURES}: "
        "the features' delay)."
    )


def list_parquet_files(features_dir: Path) -> list[Path]:
    """Every data file of the (hive-partitioned) table, skipping hidden/metadata files."""
    files = sorted(
        path
        for path in features_dir.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in path.relative_to(features_dir).parts)
    )
    if not files:
        raise SplitError(
            f"no .parquet files under {features_dir}: expected dt=YYYY-MM-DD/*.parquet "
            "partitions from the features job."
        )
    return files


def hive_partition_values(path: Path, root: Path) -> dict[str, str]:
    """``{"dt": "2026-01-31"}`` for ``root/dt=2026-01-31/part.parquet``."""
    parts = path.relative_to(root).parts[:-1]
    return dict(part.split("=", 1) for part in parts if "=" in part)


def read_partition(path: Path, root: Path, columns: list[str]) -> pa.Table:
    """Read ``columns`` from one file; a column absent from the file may come from its
    hive directory name (e.g. ``dt``)."""
    try:
        available = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SplitError(
            f"feature table file {path.relative_to(root)} ({path}) is not a readable Parquet "
            f"file ({exc}); rebuild the feature table "
            "('fraudops features') or restore it from a snapshot."
        ) from exc
    partition = hive_partition_values(path, root)
    absent = [name for name in columns if name not in available and name not in partition]
    if absent:
        raise SplitError(
            f"{path} lacks columns {absent} (declared in {FEATURE_SET_FILE} or needed "
            f"for evaluation: {list(REQUIRED_ID_COLUMNS)}); "
            "re-run the features job so every partition has the same columns."
        )
    table = pq.read_table(path, columns=[name for name in columns if name in available])
    for name in columns:
        if name not in available:
            table = table.append_column(name, pa.array([partition[name]] * len(table)))
    return table.select(columns)


def read_feature_table(features_dir: Path, files: list[Path], columns: list[str]) -> pa.Table:
    """Read only ``columns`` from every partition file into one Arrow table (file order).

    The rows stay in Arrow from here to the written splits: a pandas frame of
    the whole table cost ~2 s to build and as much again to index at 1.75M rows.
    """
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        tables = list(pool.map(lambda path: read_partition(path, features_dir, columns), files))
    return pa.concat_tables(tables, promote_options="permissive")


def utc_times(timestamps: pd.Series) -> pd.Series:
    """Each timestamp as tz-naive UTC (naive timestamps are taken as UTC), vectorised."""
    return pd.to_datetime(timestamps, utc=True).dt.tz_convert(None)


def _midnight(moment: datetime | date) -> datetime:
    day = moment.date() if isinstance(moment, datetime) else moment
    return datetime.combine(day, time())


def _floor(moment: datetime, unit_hours: int) -> datetime:
    """The start of the UTC day (``unit_hours`` 24) or hour (1) holding ``moment``."""
    if unit_hours == HOURS_PER_DAY:
        return _midnight(moment)
    return moment.replace(minute=0, second=0, microsecond=0)


# --- planning the windows ----------------------------------------------------


def default_window_units(usable_units: int, unit_hours: int) -> int:
    """A week, or a quarter of the usable time when the history is short (at least one unit)."""
    week = DEFAULT_WINDOW_DAYS * HOURS_PER_DAY // unit_hours
    return max(1, min(week, usable_units // 4))


def plan_windows(first: datetime, last: datetime, args: WindowArgs) -> WindowPlan:
    """Place train, validation and test windows over the data from ``first`` to ``last``.

    Windows are whole UTC days unless one is given in hours that are not whole
    days; then every window (and default) is laid out in whole hours.
    """
    unit_hours = args.unit_hours
    unit = timedelta(hours=unit_hours)
    data_start, data_end = _floor(first, unit_hours), _floor(last, unit_hours) + unit
    start = _midnight(args.train_start) if args.train_start else data_start
    if start >= data_end:
        raise SplitError(
            f"--train-start {args.train_start} is after the last day of data {last.date()}; "
            f"choose a date between {first.date()} and {last.date()}."
        )
    delay = timedelta(days=args.label_delay_days)
    validation_gap = timedelta(days=args.validation_gap_days)
    usable = (data_end - start - delay - validation_gap) // unit
    test = _given_or_default(args.test_hours, usable, unit_hours)
    validation = _given_or_default(args.validation_hours, usable, unit_hours)
    if not args.train_hours:
        # Anchor the test window at the end of the data; train takes what is left.
        test_window = Window("test", data_end - test, data_end)
        val_end = test_window.start - delay
        validation_window = Window("validation", val_end - validation, val_end)
        train = Window("train", start, validation_window.start - validation_gap)
    else:
        train = Window("train", start, start + timedelta(hours=args.train_hours))
        val_start = train.end + validation_gap
        validation_window = Window("validation", val_start, val_start + validation)
        test_start = validation_window.end + delay
        test_window = Window("test", test_start, test_start + test)
    plan = WindowPlan(train, validation_window, test_window, args.validation_gap_days,
                      args.label_delay_days, delay)
    check_plan_fits(plan, first, last, data_end)
    return plan


def _given_or_default(hours: int | None, usable_units: int, unit_hours: int) -> timedelta:
    if hours:
        return timedelta(hours=hours)
    return timedelta(hours=default_window_units(usable_units, unit_hours) * unit_hours)


def check_plan_fits(plan: WindowPlan, first: datetime, last: datetime, data_end: datetime) -> None:
    """Fail with the dates and the flag to change when a window falls outside the data."""
    layout = "; ".join(window.describe() for window in plan.windows())
    if plan.train.end <= plan.train.start:
        raise SplitError(
            f"no days left for training: data spans {first.date()}..{last.date()}, but "
            f"{layout}, with a label-delay gap of {plan.label_delay_days} days and a validation "
            f"gap of {plan.validation_gap_days} days. Reduce --test-days or --validation-days "
            "(whole days, or hours such as 12h), move --train-start earlier, provide more days "
            f"of data, or rebuild the features with a shorter label delay (`{rebuild_hint()}`)."
        )
    if plan.test.end > data_end:
        raise SplitError(
            f"the test window {plan.test.span()} ends after the last day of data "
            f"{last.date()} ({layout}). Reduce --train-days, --validation-days or "
            "--test-days, or move --train-start earlier."
        )


def plan_by_fractions(times: pd.Series, args: WindowArgs) -> WindowPlan:
    """The short-history fallback: a chronological split by shares of the transactions.

    Used only when no window was given and the default day windows do not fit.
    The label-delay gap (and any validation gap) shrink by the factor the data
    falls short of what the default layout needs (three week-long windows plus
    the delay), so the protocol keeps its shape at a smaller scale. The test
    window holds the last 20% of the transactions; of those before the gap,
    the first three quarters train and the last quarter validates (60/20/20
    overall, outside the gap). Cutting by transactions rather than by clock
    time keeps windows that fall on quiet night hours from being empty.
    Boundaries are whole minutes; ``times`` are the UTC times, sorted.
    """
    first, last = times.iloc[0].to_pydatetime(), times.iloc[-1].to_pydatetime()
    data_end = _minute(last) + timedelta(minutes=1)
    span = data_end - first
    needed = timedelta(days=3 * DEFAULT_WINDOW_DAYS + args.label_delay_days
                       + args.validation_gap_days)
    scale = min(1.0, span / needed)
    delay = _whole_hours(timedelta(days=args.label_delay_days) * scale)
    validation_gap = _whole_hours(timedelta(days=args.validation_gap_days) * scale)
    test_start = _minute(_quantile(times, 1 - FALLBACK_FRACTIONS["test"]))
    before_gap = times[times < pd.Timestamp(test_start - delay)]
    if len(before_gap) < 2:
        raise SplitError(
            f"the data spans {span / timedelta(hours=1):.1f} hours: too little for train, "
            f"validation and test with a {delay / timedelta(hours=1):g}-hour label-delay gap. "
            f"Provide more data or rebuild the features with `{rebuild_hint(0)}`.")
    fitted = FALLBACK_FRACTIONS["train"] + FALLBACK_FRACTIONS["validation"]
    train_end = _minute(_quantile(before_gap, FALLBACK_FRACTIONS["train"] / fitted))
    val_start = train_end + validation_gap
    return WindowPlan(
        Window("train", first, train_end),
        Window("validation", val_start, test_start - delay),
        Window("test", test_start, data_end),
        args.validation_gap_days,
        args.label_delay_days,
        delay,
        method="fractions",
        note=(
            f"short history: the data spans {span / timedelta(hours=1):.1f} hours "
            f"({first:%Y-%m-%d %H:%M}..{last:%Y-%m-%d %H:%M}), less than the default windows "
            f"need ({needed.days} days: three {DEFAULT_WINDOW_DAYS}-day windows and the "
            f"{args.label_delay_days}-day label delay), so the split is chronological by "
            "shares of the transactions: "
            + "/".join(f"{int(f * 100)}" for f in FALLBACK_FRACTIONS.values())
            + f" train/validation/test, with the label-delay gap scaled to "
            f"{delay / timedelta(hours=1):g} hours. Give --train-days/--validation-days/"
            "--test-days (days, or hours such as 12h) to choose the windows, or rebuild the "
            f"features with `{rebuild_hint(0)}` for no gap."
        ),
    )


def _quantile(times: pd.Series, share: float) -> datetime:
    """The time below which ``share`` of the (sorted) ``times`` lie."""
    return times.iloc[min(len(times) - 1, int(len(times) * share))].to_pydatetime()


def _whole_hours(span: timedelta) -> timedelta:
    return timedelta(hours=round(span / timedelta(hours=1)))


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def choose_plan(times: pd.Series, args: WindowArgs) -> WindowPlan:
    """The day (or hour) windows; when none was given and they do not fit, the fallback.

    ``times``: every transaction's UTC time, sorted.
    """
    try:
        return plan_windows(times.iloc[0].to_pydatetime(), times.iloc[-1].to_pydatetime(), args)
    except SplitError:
        if not args.derived:
            raise
        return plan_by_fractions(times, args)


# --- splitting ---------------------------------------------------------------


def in_window(times: pd.Series, window: Window) -> np.ndarray:
    """Per row: does its UTC time fall inside ``window`` (end exclusive)?"""
    return ((times >= pd.Timestamp(window.start)) & (times < pd.Timestamp(window.end))).to_numpy()


def split_table(
    table: pa.Table, times: pd.Series, plan: WindowPlan, label: str
) -> tuple[dict[str, pa.Table], dict[str, dict]]:
    """Cut ``table`` into the three windows, dropping rows whose label is unknown.

    ``times``: the rows' UTC times (:func:`utc_times`). Each window's rows are
    in time order (stable: ties keep the read order) with the label as int8.
    Returns the tables and, per window, its dates and row / fraud / dropped counts.
    """
    labelled_rows = table[label].is_valid().to_numpy(zero_copy_only=False)
    ticks = times.to_numpy()
    parts: dict[str, pa.Table] = {}
    stats: dict[str, dict] = {}
    for window in plan.windows():
        inside = in_window(times, window)
        rows = np.flatnonzero(inside & labelled_rows)
        if not len(rows):
            total = int(inside.sum())
            reason = "no rows" if not total else f"no labelled rows ({total} unlabelled)"
            raise SplitError(
                f"the {window.describe()} window has {reason}. Data days present: "
                f"{times.min().date()}..{times.max().date()}. "
                "Change --train-start or "
                f"--{window.name}-days (or the label delay: `{rebuild_hint()}`) so every "
                "window covers days with labelled transactions."
            )
        part = table.take(rows[np.argsort(ticks[rows], kind="stable")])
        labels = pc.cast(part[label], pa.int8())
        parts[window.name] = part.set_column(part.schema.get_field_index(label), label, labels)
        stats[window.name] = {
            **window.to_json(),
            "rows": len(rows),
            "frauds": int(pc.sum(labels).as_py() or 0),
            "dropped_unlabelled": int(inside.sum()) - len(rows),
        }
    return parts, stats


# --- categorical user features ------------------------------------------------


def learn_categories(parts: dict[str, pa.Table], names: list[str]) -> dict[str, list[str]]:
    """Per categorical feature, the values to give their own code, most frequent first.

    Learned from the train and validation windows (what the final model is fitted
    on), never from the test window. A value seen fewer than ``MIN_CATEGORY_ROWS``
    times, or beyond the ``MAX_CATEGORIES`` most frequent, shares the "other" code
    (``len(categories)``) with values never seen, so rare values cannot be memorised.
    """
    categories = {}
    for name in names:
        seen = pd.concat([parts[w][name].to_pandas() for w in ("train", "validation")]).dropna()
        counts = seen.astype(str).value_counts()
        counts = counts[counts >= MIN_CATEGORY_ROWS]
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        categories[name] = [value for value, _ in ordered[:MAX_CATEGORIES]]
    return categories


def encode_categories(table: pa.Table, categories: dict[str, list[str]]) -> pa.Table:
    """``table`` with each categorical column replaced by its codes (double, null if missing)."""
    for name, values in categories.items():
        codes = {value: float(code) for code, value in enumerate(values)}
        text = table[name].to_pandas().astype("string")
        encoded = text.map(codes, na_action="ignore").astype("float64")
        column = pa.array(encoded.fillna(float(len(values))).where(text.notna()), pa.float64())
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def check_labels(table: pa.Table, label: str) -> None:
    """Labels must be 0, 1 or null (unknown)."""
    labels = table[label].to_pandas()
    bad = np.flatnonzero((labels.notna() & ~labels.isin([0, 1])).to_numpy())
    if len(bad):
        raise SplitError(
            f"label column {label!r} must be 0, 1 or null; transaction "
            f"{table['transaction_id'][int(bad[0])].as_py()} has {labels.iloc[bad[0]]!r}. "
            "Fix the labels in the curated data."
        )


# --- writing -----------------------------------------------------------------


def write_atomically(path: Path, write) -> None:
    """Write through a temporary sibling so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_split(out_dir: Path, table: pa.Table, feature_set: dict, split: dict) -> None:
    """Write ``data.parquet`` and ``feature_set.json`` (feature set + split description).

    Written for train.py and evaluate.py to read fast: snappy, and dictionary
    pages only for text (ids repeat; dictionary-encoded doubles took twice as
    long to write and longer to read).
    """
    text = [f.name for f in table.schema if pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)]
    write_atomically(out_dir / DATA_FILE, lambda tmp: pq.write_table(
        table, tmp, compression="snappy", use_dictionary=text))
    payload = json.dumps({**feature_set, "split": split}, indent=2, default=str)
    write_atomically(out_dir / OUTPUT_FEATURE_SET_FILE, lambda tmp: tmp.write_text(payload))


def write_known_frauds(
    out_dir: Path, table: pa.Table, times: pd.Series, label: str, before: datetime
) -> None:
    """Each card's first fraud before ``before`` (the end of the test window), for evaluation
    to tell which cards were already known to be compromised on each test day."""
    fraud = pc.fill_null(pc.equal(table[label], 1), False).to_numpy(zero_copy_only=False)
    carded = table[CARD_COLUMN].is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(fraud & carded & (times < pd.Timestamp(before)).to_numpy())
    frauds = pd.DataFrame({CARD_COLUMN: table[CARD_COLUMN].take(rows).to_pandas(),
                           "_ts": times.iloc[rows].to_numpy()})
    first = frauds.groupby(CARD_COLUMN, sort=True)["_ts"].min().rename("first_fraud")
    table = pa.Table.from_pandas(first.reset_index(), preserve_index=False)
    write_atomically(out_dir / KNOWN_FRAUDS_FILE, lambda tmp: pq.write_table(table, tmp))


# --- entry point -------------------------------------------------------------


def iso_date(text: str) -> date | None:
    """argparse type for YYYY-MM-DD; empty means "derive" (a pipeline parameter's default)."""
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-31") from exc


def window_hours(text: str) -> int | None:
    """argparse type for a window: ``7`` or ``7d`` (days), ``36h`` (hours) -> hours;
    empty or 0 means "derive" (the pipeline parameters' default)."""
    value = text.strip().lower()
    unit = HOURS_PER_DAY
    if value.endswith(("h", "d")):
        value, unit = value[:-1], (1 if value.endswith("h") else HOURS_PER_DAY)
    if not value:
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window: give whole days (7 or 7d) or hours (36h)"
        )
    return int(value) * unit or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--base-dir", type=Path, default=Path("/opt/ml"))
    parser.add_argument("--train-start", "--train_start", type=iso_date, default=None)
    for window in ("train", "validation", "test"):
        parser.add_argument(
            f"--{window}-days", f"--{window}_days", type=window_hours, default=None,
            help="whole days (7 or 7d) or hours (36h); empty or 0: derive from the data",
        )
    parser.add_argument(
        "--label-delay-days",
        "--label_delay_days",
        type=int,
        default=None,
        help=f"default (or {LABEL_DELAY_FROM_FEATURES}): label_delay_days from "
        f"{FEATURE_SET_FILE}; another value must equal it",
    )
    parser.add_argument("--validation-gap-days", "--validation_gap_days", type=int, default=0)
    return parser.parse_args(argv)


def window_args(args: argparse.Namespace, label_delay_days: int) -> WindowArgs:
    """The window arguments with the resolved label delay; gaps cannot be negative."""
    if args.validation_gap_days < 0:
        raise SplitError("--validation-gap-days cannot be negative.")
    return WindowArgs(
        train_start=args.train_start,
        train_hours=args.train_days,
        validation_hours=args.validation_days,
        test_hours=args.test_days,
        label_delay_days=label_delay_days,
        validation_gap_days=args.validation_gap_days,
    )


def output_columns(feature_set: dict) -> list[str]:
    """Ids (always transaction_id, customer_id, timestamp), label, then features, de-duplicated."""
    ordered = [
        *REQUIRED_ID_COLUMNS,
        *feature_set["id_columns"],
        feature_set["label_column"],
        *feature_set["feature_columns"],
    ]
    return list(dict.fromkeys(ordered))


def run(args: argparse.Namespace) -> dict[str, dict]:
    """Read, split and write; returns the per-window statistics."""
    processing = args.base_dir / "processing"
    features_dir = processing / "input" / "features"
    feature_set = load_feature_set(features_dir)
    # Before reading any data: a delay mismatch must fail fast.
    windows_args = window_args(args, label_delay(args.label_delay_days, feature_set, features_dir))
    label = feature_set["label_column"]
    files = list_parquet_files(features_dir)
    print(f"reading {len(files)} feature files from {features_dir}", flush=True)
    table = read_feature_table(features_dir, files, output_columns(feature_set))
    if table.num_rows == 0:
        raise SplitError(f"the feature table under {features_dir} has no rows.")
    check_labels(table, label)
    times = utc_times(table["timestamp"].to_pandas())
    plan = choose_plan(times.dt.floor("us").sort_values(ignore_index=True), windows_args)
    if plan.note:
        print(plan.note, flush=True)
    parts, stats = split_table(table, times, plan, label)
    categories = learn_categories(parts, list(feature_set.get("categorical_features") or []))
    if categories:
        parts = {name: encode_categories(part, categories) for name, part in parts.items()}
        feature_set = {**feature_set, "categories": categories}

    windows = {name: stats[name] for name in SPLIT_NAMES}
    gaps = {
        "validation_gap_days": plan.validation_gap_days,
        "label_delay_days": plan.label_delay_days,
        "label_delay_gap_hours": plan.delay_gap / timedelta(hours=1),
        "method": plan.method,
        "note": plan.note,
    }
    # Build every output in memory first so a failure above writes nothing.
    for name in SPLIT_NAMES:
        split = {"name": name, "window": stats[name], "windows": windows, **gaps}
        write_split(processing / name, parts[name], feature_set, split)
    write_known_frauds(processing / "test", table, times, label, plan.test.end)
    return stats


def report(stats: dict[str, dict]) -> None:
    """Print the windows and counts in a greppable form."""
    for name in SPLIT_NAMES:
        s = stats[name]
        rate = s["frauds"] / s["rows"] if s["rows"] else float("nan")
        print(
            f"{name}: {s['span']} rows={s['rows']} "
            f"frauds={s['frauds']} fraud_rate={rate:.4%} "
            f"dropped_unlabelled={s['dropped_unlabelled']}"
        )
        if s["frauds"] == 0:
            print(f"warning: the {name} window has no fraud cases", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stats = run(args)
    except SplitError as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    report(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
