"""Short histories: windows in hours, and the split's fallback to time fractions.

Two days of data with a 7-day label delay cannot hold week-long windows; the
split must then fall back to a chronological 60/20/20 split by time, with the
label-delay gap scaled down and said so, instead of failing. Explicit windows
that do not fit still fail, naming what to change.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_container_scripts import PREPROCESS, load_script, read_split, run_main

START = datetime(2026, 3, 1)


def write_feature_table(features_dir: Path, hours: int, label_delay: int = 7,
                        per_hour: int = 40, seed: int = 3) -> pd.DataFrame:
    """``hours`` of transactions, evenly spread, with one numeric feature carrying the signal."""
    rng = np.random.default_rng(seed)
    n = hours * per_hour
    offsets = np.sort(rng.uniform(0, hours * 3600, size=n))
    timestamps = (pd.Timestamp(START) + pd.to_timedelta(offsets, "s")).tz_localize("UTC")
    signal = rng.normal(size=n)
    frame = pd.DataFrame({
        "transaction_id": [f"t{i:06d}" for i in range(n)],
        "timestamp": timestamps,
        "customer_id": [None] * n,
        "terminal_id": [None] * n,
        "amount": rng.lognormal(3, 1, size=n),
        "is_fraud": (signal > 2.0).astype("float64"),
        "f_signal": signal,
    })
    frame["dt"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    for dt, part in frame.groupby("dt"):
        out = features_dir / f"dt={dt}"
        out.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part.drop(columns="dt"), preserve_index=False),
                       out / "part-0.parquet")
    (features_dir / "_feature_set.json").write_text(json.dumps({
        "version": "test-short", "feature_columns": ["f_signal"], "label_column": "is_fraud",
        "id_columns": ["transaction_id", "timestamp", "customer_id", "terminal_id"],
        "label_delay_days": label_delay,
    }))
    return frame


def features_dir(base: Path) -> Path:
    return base / "processing" / "input" / "features"


def test_two_days_with_a_week_of_label_delay_fall_back_to_time_fractions(tmp_path, capsys):
    frame = write_feature_table(features_dir(tmp_path), hours=48)
    code = load_script(PREPROCESS).main(["--base-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    split = read_split(tmp_path, "test")[1]["split"]
    assert split["method"] == "fractions"
    assert split["label_delay_days"] == 7  # what the features were built with, carried on
    # The delay shrinks by the factor the data falls short of 3 weeks + the delay (2/28).
    assert split["label_delay_gap_hours"] == 12
    assert "short history" in out and "60/20/20" in out and "12 hours" in out
    windows = {name: {k: datetime.fromisoformat(w[k]) for k in ("start_time", "end_time")}
               for name, w in split["windows"].items()}
    assert windows["validation"]["start_time"] == windows["train"]["end_time"]
    assert windows["test"]["start_time"] - windows["validation"]["end_time"] == timedelta(hours=12)
    # Chronological, disjoint, the test window reaches the last transaction, and the
    # shares are of transactions: 20% test, then 3/4 train and 1/4 validation before the gap.
    parts = {name: read_split(tmp_path, name)[0] for name in ("train", "validation", "test")}
    assert parts["train"]["timestamp"].max() < parts["validation"]["timestamp"].min()
    assert parts["validation"]["timestamp"].max() < parts["test"]["timestamp"].min()
    assert parts["test"]["timestamp"].max() == frame["timestamp"].max()
    assert len(parts["test"]) == pytest.approx(0.2 * len(frame), rel=0.02)
    fitted = len(parts["train"]) + len(parts["validation"])
    assert len(parts["train"]) == pytest.approx(0.75 * fitted, rel=0.02)
    assert split["windows"]["train"]["span"] in out


def test_quiet_hours_do_not_leave_a_window_empty(tmp_path, capsys):
    """Transactions only in daytime: shares of transactions, not of the clock, so the
    validation window cannot land on a night without transactions."""
    frame = write_feature_table(features_dir(tmp_path), hours=48, label_delay=0)
    keep = frame["timestamp"].dt.hour.between(8, 20)
    daytime = frame[keep]
    for part in features_dir(tmp_path).glob("dt=*/part-0.parquet"):
        table = pq.read_table(part).to_pandas()
        pq.write_table(pa.Table.from_pandas(
            table[table["timestamp"].dt.hour.between(8, 20)], preserve_index=False), part)
    assert load_script(PREPROCESS).main(["--base-dir", str(tmp_path)]) == 0
    counts = {name: len(read_split(tmp_path, name)[0]) for name in ("train", "validation", "test")}
    assert counts["validation"] == pytest.approx(0.2 * len(daytime), rel=0.05)
    assert counts["test"] == pytest.approx(0.2 * len(daytime), rel=0.05)


def test_no_label_delay_gives_a_plain_sixty_twenty_twenty_split(tmp_path, capsys):
    frame = write_feature_table(features_dir(tmp_path), hours=48, label_delay=0)
    assert load_script(PREPROCESS).main(["--base-dir", str(tmp_path)]) == 0
    split = read_split(tmp_path, "test")[1]["split"]
    assert split["method"] == "fractions" and split["label_delay_gap_hours"] == 0
    counts = [len(read_split(tmp_path, name)[0]) for name in ("train", "validation", "test")]
    assert sum(counts) == len(frame)  # no gap: every transaction is used
    assert counts == pytest.approx([0.6 * len(frame), 0.2 * len(frame), 0.2 * len(frame)],
                                   rel=0.02)


def test_windows_can_be_given_in_hours(tmp_path, capsys):
    write_feature_table(features_dir(tmp_path), hours=48, label_delay=0)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path), "--train-days", "30h",
                         "--validation-days", "6h", "--test-days", "12h")
    assert code == 0, err
    windows = read_split(tmp_path, "test")[1]["split"]["windows"]
    bounds = {name: (w["start_time"], w["end_time"], w["hours"]) for name, w in windows.items()}
    assert bounds == {
        "train": ("2026-03-01T00:00:00", "2026-03-02T06:00:00", 30),
        "validation": ("2026-03-02T06:00:00", "2026-03-02T12:00:00", 6),
        "test": ("2026-03-02T12:00:00", "2026-03-03T00:00:00", 12),
    }
    assert read_split(tmp_path, "test")[1]["split"]["method"] == "windows"


def test_hour_windows_anchor_the_test_window_at_the_last_hour(tmp_path, capsys):
    write_feature_table(features_dir(tmp_path), hours=47, label_delay=0)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path),
                         "--validation-days", "6h", "--test-days", "10h")
    assert code == 0, err
    windows = read_split(tmp_path, "test")[1]["split"]["windows"]
    assert windows["test"]["end_time"] == "2026-03-02T23:00:00"
    assert windows["test"]["start_time"] == "2026-03-02T13:00:00"
    assert windows["train"]["start_time"] == "2026-03-01T00:00:00"


def test_whole_days_given_as_7d_are_day_windows(tmp_path, capsys):
    write_feature_table(features_dir(tmp_path), hours=20 * 24, per_hour=4, label_delay=2)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path),
                         "--validation-days", "3d", "--test-days", "72h")
    assert code == 0, err
    windows = read_split(tmp_path, "test")[1]["split"]["windows"]
    assert (windows["test"]["start"], windows["test"]["end"], windows["test"]["days"]) == (
        "2026-03-18", "2026-03-20", 3)
    assert windows["validation"]["end"] == "2026-03-15"


def test_explicit_windows_that_do_not_fit_still_fail(tmp_path, capsys):
    write_feature_table(features_dir(tmp_path), hours=48)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path), "--test-days", "12h")
    assert code == 2
    assert "no days left for training" in err and "--label-delay-days" in err
    assert not (tmp_path / "processing" / "train").exists()


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "3w"])
def test_a_window_that_is_not_days_or_hours_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        load_script(PREPROCESS).parse_args(["--test-days", value])
    assert "give whole days (7 or 7d) or hours (36h)" in capsys.readouterr().err
