"""The user's own feature columns at ingest (issue 13 item 1, ingest side).

A column map target ``feature:numeric`` or ``feature:categorical`` keeps the
column in curated data under its own name: numeric as float64 (a value that is
not a plain number quarantines the row, the reason naming the column),
categorical as text; missing values stay missing.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.landing import curated, quarantined, row, write_csv
from fixtures.pan_scan import clear_card_numbers

from pipelines.core import schema
from pipelines.data.ingest import IngestError, ingest
from pipelines.data.ingest.columns import check_column_map, load_column_map
from pipelines.data.ingest.validation import DERIVED_ID_PREFIX

FEATURES = {"V1": "feature:numeric", "device": "feature:categorical"}
VISA = "4111111111111111"


def feature_row(tx: str, v1: str, device: str) -> dict[str, str]:
    return row(tx) | {"V1": v1, "device": device}


def test_declared_columns_are_curated_typed_under_their_own_names(workspace, tmp_path):
    drop = write_csv(tmp_path / "a.csv", [feature_row("a", "-1.25", " ios "),
                                          feature_row("b", "", "web"),
                                          feature_row("c", "3", "")])

    report = ingest(workspace, [drop], FEATURES)

    table = curated(workspace)
    assert table.schema.field("V1").type == pa.float64()
    assert table.schema.field("device").type == pa.string()
    records = {r["transaction_id"]: r for r in table.to_pylist()}
    assert [records[t]["V1"] for t in "abc"] == [-1.25, None, 3.0]
    assert [records[t]["device"] for t in "abc"] == ["ios", "web", None]
    assert report.rows_curated == 3
    # Columns neither mapped nor declared are still never stored.
    assert "merchant" not in table.column_names


@pytest.mark.parametrize("value", ["abc", "1_000", "1e3", "inf", "1.2.3"])
def test_a_numeric_feature_that_is_not_a_plain_number_quarantines_the_row_naming_it(
        workspace, tmp_path, value):
    drop = write_csv(tmp_path / "a.csv", [feature_row("a", "0.5", "ios"),
                                          feature_row("b", value, "ios")])

    report = ingest(workspace, [drop], FEATURES)

    assert report.quarantine_reasons == {"bad_feature_value:V1": 1}
    (bad,) = quarantined(workspace).to_pylist()
    assert (bad["transaction_id"], bad["source_line"]) == ("b", 3)


def test_a_declared_feature_missing_from_the_file_is_refused(workspace, tmp_path):
    drop = write_csv(tmp_path / "a.csv", [row("a")])
    with pytest.raises(IngestError, match=r"a\.csv: the column map declares feature column\(s\) "
                                          r"'V1', 'device', which the file does not have"):
        ingest(workspace, [drop], FEATURES)
    assert not workspace.curated.exists()


@pytest.mark.parametrize("name", ["amount", "Amount", "dt", "card_token", "_line", " "])
def test_a_feature_may_not_take_a_built_in_name(name):
    with pytest.raises(IngestError, match="cannot keep that name"):
        check_column_map({name: "feature:numeric"})


def test_a_card_number_in_a_categorical_feature_is_quarantined_and_masked(workspace, tmp_path):
    drop = write_csv(tmp_path / "a.csv", [feature_row("a", "1", "ios"),
                                          feature_row("b", "2", f"card {VISA}")])

    report = ingest(workspace, [drop], FEATURES)

    assert report.quarantine_reasons == {"card_number_in_text:device": 1}
    assert clear_card_numbers(workspace.root, [VISA]) == []


def test_feature_values_tell_id_less_rows_apart(workspace, tmp_path):
    drop = tmp_path / "creditcard.csv"
    drop.write_text("Time,V1,Amount,Class\n0,0.5,1.00,0\n0,-0.5,1.00,0\n0,-0.5,1.00,0\n")
    mapping = {"columns": {"Time": "timestamp", "Amount": "amount", "Class": "is_fraud",
                           "V1": "feature:numeric"}, "time_origin": "2013-09-01T00:00:00Z"}

    ingest(workspace, [drop], check_column_map(mapping))

    ids = sorted(curated(workspace).column("transaction_id").to_pylist())
    assert all(i.startswith(DERIVED_ID_PREFIX) for i in ids)
    assert sum(i.endswith("-1") for i in ids) == 1  # only the true repeat is numbered


def test_typed_features_from_parquet_and_json_lines(workspace, tmp_path):
    base = {"transaction_id": ["p1", "p2"], "timestamp": ["2024-03-01T10:00:00Z"] * 2,
            "amount": [1.0, 2.0], "V1": [1e-7, 2.5], "device": ["ios", None]}
    pq.write_table(pa.table(base), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text(json.dumps(
        {"transaction_id": "j1", "timestamp": 1709287200, "amount": 3, "V1": 7,
         "device": "web"}) + "\n")

    ingest(workspace, [tmp_path / "a.parquet", tmp_path / "b.jsonl"], FEATURES)

    records = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    assert [records[t]["V1"] for t in ("p1", "p2", "j1")] == [1e-7, 2.5, 7.0]
    assert [records[t]["device"] for t in ("p1", "p2", "j1")] == ["ios", None, "web"]


def test_the_fixture_layouts_column_maps_load(tmp_path):
    from fixtures.third_party import USER_FEATURE_LAYOUTS

    for layout in USER_FEATURE_LAYOUTS.values():
        mapping = load_column_map(layout.column_map_path)
        assert set(mapping.values()) >= {"timestamp", "amount", "is_fraud"}
        assert any(kind.startswith("feature:") for kind in mapping.values())
    assert schema.REQUIRED_COLUMNS == ("timestamp", "amount")
