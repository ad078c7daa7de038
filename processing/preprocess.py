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
    * 0 for a ``--*-days`` argument means "derive", as the pipeline parameters do.
    * ``--test-days`` and ``--validation-days``: 7 (a week covers the weekly
      seasonality of card spending), shrunk to a quarter of the usable days on
      short histories.
    * ``--train-days``: unset (or 0) means "every day from --train-start up to
      the validation window" and the test window is the last days of the data.
      Set, the windows are laid out forwards from --train-start (for
      backtesting an older period).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FEATURE_SET_FILE = "_feature_set.json"
OUTPUT_FEATURE_SET_FILE = "feature_set.json"
DATA_FILE = "data.parquet"
SPLIT_NAMES = ("train", "validation", "test")
# Columns evaluation and scoring need besides the features and the label.
REQUIRED_ID_COLUMNS = ("transaction_id", "customer_id", "timestamp")
DEFAULT_WINDOW_DAYS = 7
# --label-delay-days value meaning "the feature manifest's" (the pipeline parameter's
# default, pipelines.core.params.LABEL_DELAY_FROM_FEATURES: this script cannot import it).
LABEL_DELAY_FROM_FEATURES = -1


def rebuild_hint(days: object = "N") -> str:
    """The command that rebuilds the feature table with another label delay."""
    return f"fraudops features --label-delay-days {days}"


class SplitError(Exception):
    """A user-fixable problem with the input data or the window arguments."""


@dataclass(frozen=True)
class Window:
    """An inclusive range of UTC days."""

    name: str
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def describe(self) -> str:
        return f"{self.name} {self.start.isoformat()}..{self.end.isoformat()} ({self.days} days)"

    def to_json(self) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "days": self.days}


@dataclass(frozen=True)
class WindowPlan:
    """The three windows plus the gaps between them."""

    train: Window
    validation: Window
    test: Window
    validation_gap_days: int
    label_delay_days: int

    def windows(self) -> tuple[Window, Window, Window]:
        return (self.train, self.validation, self.test)


@dataclass(frozen=True)
class WindowArgs:
    """The window arguments as given on the command line (None = derive)."""

    train_start: date | None
    train_days: int | None
    validation_days: int | None
    test_days: int | None
    label_delay_days: int
    validation_gap_days: int


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
    available = set(pq.read_schema(path).names)
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


def read_feature_table(features_dir: Path, files: list[Path], columns: list[str]) -> pd.DataFrame:
    """Read only ``columns`` from every partition file into one frame."""
    tables = [read_partition(path, features_dir, columns) for path in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()


def utc_days(timestamps: pd.Series) -> pd.Series:
    """Midnight of each timestamp's UTC day, tz-naive (naive timestamps are taken as UTC).

    Kept as datetime64 rather than ``date`` objects so window filters stay vectorised.
    """
    stamps = pd.to_datetime(timestamps, utc=True)
    return stamps.dt.tz_convert(None).dt.floor("D")


# --- planning the windows ----------------------------------------------------


def default_window_days(usable_days: int) -> int:
    """A week, or a quarter of the usable days when the history is short (at least 1)."""
    return max(1, min(DEFAULT_WINDOW_DAYS, usable_days // 4))


def plan_windows(first_day: date, last_day: date, args: WindowArgs) -> WindowPlan:
    """Place train, validation and test windows between ``first_day`` and ``last_day``."""
    start = args.train_start or first_day
    if start > last_day:
        raise SplitError(
            f"--train-start {start} is after the last day of data {last_day}; "
            f"choose a date between {first_day} and {last_day}."
        )
    usable = (last_day - start).days + 1 - args.label_delay_days - args.validation_gap_days
    test_days = args.test_days or default_window_days(usable)
    validation_days = args.validation_days or default_window_days(usable)
    for flag, value in (("--test-days", test_days), ("--validation-days", validation_days)):
        if value < 1:
            raise SplitError(f"{flag} must be at least 1 (got {value}).")

    if not args.train_days:
        # Anchor the test window at the end of the data; train takes what is left.
        test = Window("test", last_day - timedelta(days=test_days - 1), last_day)
        val_end = test.start - timedelta(days=args.label_delay_days + 1)
        validation = Window("validation", val_end - timedelta(days=validation_days - 1), val_end)
        train_end = validation.start - timedelta(days=args.validation_gap_days + 1)
        train = Window("train", start, train_end)
    else:
        if args.train_days < 1:
            raise SplitError(f"--train-days must be at least 1 (got {args.train_days}).")
        train = Window("train", start, start + timedelta(days=args.train_days - 1))
        val_start = train.end + timedelta(days=args.validation_gap_days + 1)
        validation = Window(
            "validation", val_start, val_start + timedelta(days=validation_days - 1)
        )
        test_start = validation.end + timedelta(days=args.label_delay_days + 1)
        test = Window("test", test_start, test_start + timedelta(days=test_days - 1))

    plan = WindowPlan(train, validation, test, args.validation_gap_days, args.label_delay_days)
    check_plan_fits(plan, first_day, last_day)
    return plan


def check_plan_fits(plan: WindowPlan, first_day: date, last_day: date) -> None:
    """Fail with the dates and the flag to change when a window falls outside the data."""
    layout = "; ".join(window.describe() for window in plan.windows())
    if plan.train.end < plan.train.start:
        raise SplitError(
            f"no days left for training: data spans {first_day}..{last_day}, but {layout}, "
            f"with a label-delay gap of {plan.label_delay_days} days and a validation gap of "
            f"{plan.validation_gap_days} days. Reduce --test-days or --validation-days, "
            "move --train-start earlier, provide more days of data, or rebuild the features "
            f"with a shorter label delay (`{rebuild_hint()}`)."
        )
    if plan.test.end > last_day:
        raise SplitError(
            f"the test window {plan.test.start}..{plan.test.end} ends after the last day of "
            f"data {last_day} ({layout}). Reduce --train-days, --validation-days or "
            "--test-days, or move --train-start earlier."
        )


# --- splitting ---------------------------------------------------------------


def rows_in(frame: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The rows whose UTC day falls inside ``window``."""
    mask = (frame["_day"] >= pd.Timestamp(window.start)) & (
        frame["_day"] <= pd.Timestamp(window.end)
    )
    return frame.loc[mask]


def split_frame(
    frame: pd.DataFrame, plan: WindowPlan, label: str
) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """Cut ``frame`` into the three windows, dropping rows whose label is unknown.

    Returns the frames and, per window, its dates and row / fraud / dropped counts.
    """
    frames: dict[str, pd.DataFrame] = {}
    stats: dict[str, dict] = {}
    for window in plan.windows():
        part = rows_in(frame, window)
        labelled = part[part[label].notna()]
        if labelled.empty:
            reason = "no rows" if part.empty else f"no labelled rows ({len(part)} unlabelled)"
            raise SplitError(
                f"the {window.describe()} window has {reason}. Data days present: "
                f"{frame['_day'].min().date()}..{frame['_day'].max().date()}. "
                "Change --train-start or "
                f"--{window.name}-days (or the label delay: `{rebuild_hint()}`) so every "
                "window covers days with labelled transactions."
            )
        labelled = labelled.sort_values("timestamp", kind="stable").drop(columns="_day")
        labelled[label] = labelled[label].astype("int8")
        frames[window.name] = labelled.reset_index(drop=True)
        stats[window.name] = {
            **window.to_json(),
            "rows": len(labelled),
            "frauds": int(labelled[label].sum()),
            "dropped_unlabelled": len(part) - len(labelled),
        }
    return frames, stats


def check_labels(frame: pd.DataFrame, label: str) -> None:
    """Labels must be 0, 1 or null (unknown)."""
    known = frame[label].dropna()
    bad = known[~known.isin([0, 1])]
    if not bad.empty:
        row = frame.loc[bad.index[0]]
        raise SplitError(
            f"label column {label!r} must be 0, 1 or null; transaction "
            f"{row['transaction_id']} has {bad.iloc[0]!r}. Fix the labels in the curated data."
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


def write_split(out_dir: Path, frame: pd.DataFrame, feature_set: dict, split: dict) -> None:
    """Write ``data.parquet`` and ``feature_set.json`` (feature set + split description)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    write_atomically(out_dir / DATA_FILE, lambda tmp: pq.write_table(table, tmp))
    payload = json.dumps({**feature_set, "split": split}, indent=2, default=str)
    write_atomically(out_dir / OUTPUT_FEATURE_SET_FILE, lambda tmp: tmp.write_text(payload))


# --- entry point -------------------------------------------------------------


def iso_date(text: str) -> date | None:
    """argparse type for YYYY-MM-DD; empty means "derive" (a pipeline parameter's default)."""
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-31") from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--base-dir", type=Path, default=Path("/opt/ml"))
    parser.add_argument("--train-start", "--train_start", type=iso_date, default=None)
    parser.add_argument("--train-days", "--train_days", type=int, default=None)
    parser.add_argument("--validation-days", "--validation_days", type=int, default=None)
    parser.add_argument("--test-days", "--test_days", type=int, default=None)
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
        train_days=args.train_days,
        validation_days=args.validation_days,
        test_days=args.test_days,
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
    frame = read_feature_table(features_dir, files, output_columns(feature_set))
    if frame.empty:
        raise SplitError(f"the feature table under {features_dir} has no rows.")
    check_labels(frame, label)
    frame["_day"] = utc_days(frame["timestamp"])
    first_day, last_day = frame["_day"].min().date(), frame["_day"].max().date()
    plan = plan_windows(first_day, last_day, windows_args)
    frames, stats = split_frame(frame, plan, label)

    windows = {name: stats[name] for name in SPLIT_NAMES}
    gaps = {
        "validation_gap_days": plan.validation_gap_days,
        "label_delay_days": plan.label_delay_days,
    }
    # Build every output in memory first so a failure above writes nothing.
    for name in SPLIT_NAMES:
        split = {"name": name, "window": stats[name], "windows": windows, **gaps}
        write_split(processing / name, frames[name], feature_set, split)
    return stats


def report(stats: dict[str, dict]) -> None:
    """Print the windows and counts in a greppable form."""
    for name in SPLIT_NAMES:
        s = stats[name]
        rate = s["frauds"] / s["rows"] if s["rows"] else float("nan")
        print(
            f"{name}: {s['start']}..{s['end']} ({s['days']} days) rows={s['rows']} "
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
