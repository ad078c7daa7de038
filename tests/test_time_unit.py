"""Offset times in other units than seconds (``--time-unit`` / ``"time_unit"``).

PaySim counts time in ``step`` = hours from the start: read as seconds, a month
would collapse into 12 minutes and every window, hour of day and day split
would be silently wrong. With ``--time-unit hours`` each step is exactly that
many hours after ``--time-origin``; a unit without an origin is refused; a big
file whose seconds-offsets span under an hour gets a warning naming the fix.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from fixtures.landing import curated
from fixtures.paysim import COLUMNS, FEATURES, ORIGIN, ORIGIN_TEXT, paysim_csv

from pipelines.cli.main import build_parser
from pipelines.cli.main import main as cli_main
from pipelines.data.ingest import IngestError, ingest
from pipelines.data.ingest.columns import TIME_UNITS, check_column_map, load_column_map


def write_map(path, columns, **settings):
    path.write_text(json.dumps({"columns": columns, **settings}))
    return path


def assert_hours_from_origin(workspace, steps: dict[str, int]) -> None:
    """Each curated row sits exactly ``step`` hours after the origin, in its day partition."""
    table = curated(workspace)
    assert table.num_rows == len(steps)
    times = dict(zip(table.column("customer_id").to_pylist(),
                     table.column("timestamp").to_pylist(), strict=True))
    assert times == {name: ORIGIN + timedelta(hours=step) for name, step in steps.items()}
    days = {(ORIGIN + timedelta(hours=step)).date().isoformat() for step in steps.values()}
    assert len(days) == 9  # steps 1..200: 2026-01-01 01:00 to 2026-01-09 08:00
    assert {p.name.removeprefix("dt=") for p in workspace.curated.glob("dt=*")} == days
    for path in workspace.curated.glob("dt=*"):
        for file in path.glob("*.parquet"):
            stamps = pq.read_table(file).column("timestamp").to_pylist()
            assert {t.date().isoformat() for t in stamps} == {path.name.removeprefix("dt=")}


def test_paysim_steps_are_hours_from_the_origin_with_the_flags(workspace, tmp_path, capsys):
    steps = paysim_csv(tmp_path / "paysim.csv")
    mapping = write_map(tmp_path / "paysim.json", FEATURES)

    code = cli_main(["ingest", str(tmp_path / "paysim.csv"), "--column-map", str(mapping),
                     "--time-origin", ORIGIN_TEXT, "--time-unit", "hours",
                     "--workdir", str(workspace.root)])

    assert code == 0
    assert_hours_from_origin(workspace, steps)
    assert "--time-unit" not in capsys.readouterr().out  # no wrong-unit warning
    features = curated(workspace).column_names
    assert {"type", "oldbalanceOrg", "newbalanceDest"} <= set(features)


def test_paysim_steps_are_hours_through_the_column_maps_time_unit(workspace, tmp_path):
    steps = paysim_csv(tmp_path / "paysim.csv")
    mapping = load_column_map(write_map(tmp_path / "paysim.json", FEATURES,
                                        time_origin=ORIGIN_TEXT, time_unit="hours"))
    assert mapping.time_unit == "hours"

    report = ingest(workspace, [tmp_path / "paysim.csv"], mapping)

    assert report.rows_curated == len(steps) and not report.notes
    assert_hours_from_origin(workspace, steps)


def test_the_flag_overrides_the_column_maps_unit(workspace, tmp_path):
    steps = paysim_csv(tmp_path / "paysim.csv", rows=50)
    mapping = check_column_map({"columns": COLUMNS, "time_origin": ORIGIN_TEXT,
                                "time_unit": "minutes"})

    ingest(workspace, [tmp_path / "paysim.csv"], mapping, time_unit="hours")

    table = curated(workspace)
    assert max(table.column("timestamp").to_pylist()) == ORIGIN + timedelta(hours=max(
        steps.values()))


@pytest.mark.parametrize("unit", list(TIME_UNITS))
def test_every_unit_is_exact_and_decimals_are_allowed(workspace, tmp_path, unit):
    drop = tmp_path / "offsets.csv"
    values = ["0", "1", "1.5", "-2", "30", "0.25"]
    drop.write_text("t,amount\n" + "".join(f"{v},{i}.00\n" for i, v in enumerate(values)))

    report = ingest(workspace, [drop], {"t": "timestamp"}, time_origin=ORIGIN, time_unit=unit)

    assert report.rows_curated == len(values)
    table = curated(workspace)
    times = dict(zip(table.column("amount").to_pylist(), table.column("timestamp").to_pylist(),
                     strict=True))
    seconds = TIME_UNITS[unit]
    assert times == {float(i): ORIGIN + timedelta(seconds=float(v) * seconds)
                     for i, v in enumerate(values)}


def test_a_unit_without_an_origin_is_refused_naming_both(workspace, tmp_path, capsys):
    paysim_csv(tmp_path / "paysim.csv", rows=20)
    mapping = write_map(tmp_path / "paysim.json", COLUMNS)

    code = cli_main(["ingest", str(tmp_path / "paysim.csv"), "--column-map", str(mapping),
                     "--time-unit", "hours", "--workdir", str(workspace.root)])

    assert code == 2
    err = capsys.readouterr().err
    assert "time unit 'hours'" in err and "--time-unit" in err and "--time-origin" in err
    assert curated(workspace).num_rows == 0
    with pytest.raises(IngestError, match=r"'days'.*\"time_unit\".*--time-origin"):
        ingest(workspace, [tmp_path / "paysim.csv"],
               check_column_map({"columns": COLUMNS, "time_unit": "days"}))


def test_a_bad_unit_names_the_choices(tmp_path, capsys):
    with pytest.raises(IngestError, match=r"map\.json: time_unit: 'fortnights' is not a time "
                                          r"unit; give one of seconds, minutes, hours, days"):
        load_column_map(write_map(tmp_path / "map.json", COLUMNS, time_origin=ORIGIN_TEXT,
                                  time_unit="fortnights"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "x.csv", "--time-unit", "weeks"])
    assert "invalid choice: 'weeks'" in capsys.readouterr().err


def test_fraudops_run_takes_a_time_unit_for_your_own_data(tmp_path):
    from pipelines.cli.commands._common import UserError
    from pipelines.cli.commands.run import _options

    paysim_csv(tmp_path / "paysim.csv", rows=20)
    args = build_parser().parse_args(["run", "--input", str(tmp_path / "paysim.csv"),
                                      "--time-origin", ORIGIN_TEXT, "--time-unit", "days"])
    assert _options(args).time_unit == "days"
    with pytest.raises(UserError, match="--time-unit applies to your own data"):
        _options(build_parser().parse_args(["run", "--time-unit", "hours"]))


# --- the silent failure: hours read as seconds ----------------------------------------------
def test_a_big_file_of_seconds_spanning_minutes_is_warned_about(workspace, tmp_path, capsys):
    paysim_csv(tmp_path / "paysim.csv", rows=1_200, last_step=743)  # PaySim's month
    mapping = write_map(tmp_path / "paysim.json", COLUMNS)

    code = cli_main(["ingest", str(tmp_path / "paysim.csv"), "--column-map", str(mapping),
                     "--time-origin", ORIGIN_TEXT, "--workdir", str(workspace.root)])

    assert code == 0  # a warning, not a refusal
    # The console wraps long paths anywhere (narrower without a terminal): compare without spaces.
    out = "".join(capsys.readouterr().out.split())
    assert "paysim.csv:warning" in out and "--time-unit" in out
    log = json.loads(next((workspace.logs / "ingest").glob("*.json")).read_text())
    (note,) = [n for n in log["notes"] if "--time-unit" in n]
    assert "paysim.csv: warning" in note and "'step'" in note and "742 seconds" in note


def test_no_warning_for_seconds_spanning_days_or_hours_given(workspace, tmp_path):
    drop = tmp_path / "seconds.csv"
    drop.write_text("t,amount\n" + "".join(f"{i * 217},{i % 90}.50\n" for i in range(1_200)))
    report = ingest(workspace, [drop], {"t": "timestamp"}, time_origin=ORIGIN)
    assert report.rows_curated == 1_200 and not report.notes

    paysim_csv(tmp_path / "paysim.csv", rows=1_200, last_step=743)
    report = ingest(workspace, [tmp_path / "paysim.csv"], COLUMNS, time_origin=ORIGIN,
                    time_unit="hours")
    assert report.rows_curated == 1_200 and not report.notes


def test_the_documented_paysim_column_map_is_the_one_tested_here():
    """docs/BRING_YOUR_OWN_DATA.md's PaySim map loads, and maps what these tests map."""
    from conftest import REPO_ROOT

    text = (REPO_ROOT / "docs" / "BRING_YOUR_OWN_DATA.md").read_text()
    block = next(b.split("```", 1)[0] for b in text.split("```json\n")[1:] if '"step"' in b)
    mapping = check_column_map(json.loads(block))
    assert dict(mapping) == FEATURES
    assert (mapping.time_origin, mapping.time_unit) == (ORIGIN, "hours")
