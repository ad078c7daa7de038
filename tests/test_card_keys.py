"""Card datasets: per-card features keyed on the card token, 12-digit cards, cards in id columns.

Data shaped like the public "Sparkov" card set (fraudTrain.csv) has one key per
card, ``cc_num``, a clear card number, and no customer id. Mapped to
``card_number`` it is tokenised and each transaction's customer id is derived
from the token (``tokenise.card_customer_ids``), in batch ingest and in the
stream alike, so the per-card features exist and are equal in both. Mapped to
an id column instead, its rows are quarantined naming the column and the fix,
and no number, 12-digit Maestro ones included, is stored in clear.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pytest
from fixtures.landing import curated, quarantined, row, write_csv
from fixtures.pan_scan import clear_card_numbers

from pipelines.cli.main import main
from pipelines.compliance.carddata import luhn_valid, mask, mask_card_numbers
from pipelines.core.workspace import Workspace
from pipelines.data.datagen import GeneratorConfig, generate_transactions
from pipelines.data.datagen.malformed import landing_text
from pipelines.data.features.build import build_feature_table
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.data.ingest import ingest
from pipelines.data.ingest.tokenise import Tokeniser, load_key
from pipelines.serving.online.engine import OnlineFeatureEngine
from pipelines.serving.stream.core import process_batch
from pipelines.serving.stream.source import RawRecord

# The four cc_num values of the report: 16, 12 (Maestro IIN 6304, Luhn-valid), 14, 16 digits.
SPARKOV_CARDS = ("2703186189652095", "630423337322", "38859492057661", "3534093764340240")
MAESTRO_12 = SPARKOV_CARDS[1]
SPARKOV_HEADER = ("Unnamed: 0,trans_date_trans_time,cc_num,merchant,category,amt,first,last,"
                  "gender,street,city,state,zip,lat,long,city_pop,job,dob,trans_num,unix_time,"
                  "merch_lat,merch_long,is_fraud")
SPARKOV_ROWS = (
    '0,2019-01-01 00:00:18,2703186189652095,"fraud_Rippin, Kub and Mann",misc_net,4.97,'
    'Jennifer,Banks,F,561 Perry Cove,Moravian Falls,NC,28654,36.0788,-81.1781,3495,'
    '"Psychologist, counselling",1988-03-09,0b242abb623afc578575680df30655b9,1325376018,'
    '36.011293,-82.048315,0',
    '1,2019-01-01 00:00:44,630423337322,"fraud_Heller, Gutmann and Zieme",grocery_pos,107.23,'
    'Stephanie,Gill,F,43039 Riley Greens Suite 393,Orient,WA,99160,48.8878,-118.2105,149,'
    'Special educational needs teacher,1978-06-21,1f76529f8574734946361c461b024d99,'
    '1325376044,49.159047,-118.186462,0',
    '2,2019-01-01 00:00:51,38859492057661,fraud_Lind-Buckridge,entertainment,220.11,Edward,'
    'Sanchez,M,594 White Dale Suite 530,Malad City,ID,83252,42.1808,-112.262,4154,'
    'Nature conservation officer,1962-01-19,a1a22d70485983eac12b5b88dad1cf95,1325376051,'
    '43.150704,-112.154481,0',
    '3,2019-01-01 00:01:16,3534093764340240,"fraud_Kutch, Hermiston and Farrell",gas_transport,'
    '45.0,Jeremy,White,M,9443 Cynthia Court Apt. 038,Boulder,WY,82514,43.0048,-108.8964,1939,'
    'Patent attorney,1967-01-21,6b849c168bdad6f867558c3793159a81,1325376076,47.034331,'
    '-112.561071,0',
)
# Later transactions of two of the same cards (a second drop): same card, same customer.
SPARKOV_LATER = (
    '4,2019-01-01 05:10:00,630423337322,fraud_Lind-Buckridge,grocery_pos,12.00,Stephanie,Gill,'
    'F,x,Orient,WA,99160,0,0,149,x,1978-06-21,c2e0aa8a1b5d4c6e9f0a1b2c3d4e5f60,1325394600,0,0,0',
    '5,2019-01-01 05:20:00,2703186189652095,fraud_Lind-Buckridge,misc_net,9.99,Jennifer,Banks,'
    'F,x,Moravian Falls,NC,28654,0,0,3495,x,1988-03-09,d3f1bb9b2c6e5d7fa0b1c2d3e4f5a6b7,'
    '1325395200,0,0,0',
)
SPARKOV_MAP = {"trans_date_trans_time": "timestamp", "cc_num": "card_number", "amt": "amount",
               "trans_num": "transaction_id", "merchant": "terminal_id",
               "category": "merchant_category", "is_fraud": "is_fraud"}
# Longer than any run of a card's digits its mask shows (first six): finding one is a leak.
LEAK_WINDOW = 7


def sparkov_csv(path: Path, rows: tuple[str, ...] = SPARKOV_ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([SPARKOV_HEADER, *rows]) + "\n")
    return path


def pan_pieces(cards: tuple[str, ...]) -> list[str]:
    """Every run of ``LEAK_WINDOW`` consecutive digits of each card (and each card whole)."""
    return [*cards, *{c[i:i + LEAK_WINDOW] for c in cards for i in range(len(c) - 6)}]


def map_file(tmp_path: Path, mapping: dict[str, str]) -> Path:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    return path


def expected_customer(ws: Workspace, card: str) -> str:
    """The documented rule, computed independently: ``card-`` + 32 hex digits of the token."""
    return "card-" + Tokeniser(load_key(ws.secrets)).token(card)[:32]


def ingest_log(ws: Workspace) -> dict:
    (log,) = sorted((ws.root / "logs" / "ingest").glob("ing-*.json"))
    return json.loads(log.read_text())


# --- the Sparkov-like file --------------------------------------------------------------------
def test_a_card_number_key_gives_per_card_customer_ids_and_the_customer_features(
        tmp_path, capsys):
    ws_dir = tmp_path / "ws"
    column_map = map_file(tmp_path, SPARKOV_MAP)
    first = sparkov_csv(tmp_path / "drops" / "fraudTrain.csv")
    later = sparkov_csv(tmp_path / "drops" / "fraudTrain-later.csv", SPARKOV_LATER)

    assert main(["ingest", "--workdir", str(ws_dir), "--column-map", str(column_map),
                 str(first)]) == 0
    assert main(["ingest", "--workdir", str(ws_dir), "--column-map", str(column_map),
                 str(later)]) == 0
    assert main(["features", "--workdir", str(ws_dir)]) == 0
    output = capsys.readouterr()

    ws = Workspace.open(ws_dir)
    stored = {r["transaction_id"]: r for r in curated(ws).to_pylist()}
    assert len(stored) == 6 and quarantined(ws).num_rows == 0
    by_card = {"0b242abb623afc578575680df30655b9": SPARKOV_CARDS[0],
               "1f76529f8574734946361c461b024d99": SPARKOV_CARDS[1],
               "a1a22d70485983eac12b5b88dad1cf95": SPARKOV_CARDS[2],
               "6b849c168bdad6f867558c3793159a81": SPARKOV_CARDS[3],
               "c2e0aa8a1b5d4c6e9f0a1b2c3d4e5f60": MAESTRO_12,
               "d3f1bb9b2c6e5d7fa0b1c2d3e4f5a6b7": SPARKOV_CARDS[0]}
    for tx, card in by_card.items():
        assert stored[tx]["customer_id"] == expected_customer(ws, card), tx
        assert stored[tx]["card_masked"] == mask(card)
        assert stored[tx]["card_token"].startswith(stored[tx]["customer_id"][len("card-"):])
    # Same card, same customer, across rows and drops; different cards, different customers.
    assert len({r["customer_id"] for r in stored.values()}) == 4
    assert stored["1f76529f8574734946361c461b024d99"]["card_masked"] == "6304****7322"
    feature_set = json.loads((ws.features / "_feature_set.json").read_text())
    assert "customer" in feature_set["feature_groups"]
    assert "customer" not in feature_set["left_out_groups"]
    features = {r["transaction_id"]: r
                for r in ds.dataset(ws.features, format="parquet").to_table().to_pylist()}
    # The Maestro card's second transaction sees its first: per-card velocity is real.
    assert features["c2e0aa8a1b5d4c6e9f0a1b2c3d4e5f60"]["cust_tx_count_1d"] == 2
    assert features["c2e0aa8a1b5d4c6e9f0a1b2c3d4e5f60"]["seconds_since_prev_tx"] == 18556
    assert clear_card_numbers(ws_dir, pan_pieces(SPARKOV_CARDS),
                              output.out + output.err) == []


def test_card_numbers_mapped_to_customer_id_are_quarantined_naming_the_column_and_the_fix(
        tmp_path, capsys):
    ws_dir = tmp_path / "ws"
    column_map = map_file(tmp_path, {**SPARKOV_MAP, "cc_num": "customer_id"})
    drop = sparkov_csv(tmp_path / "fraudTrain.csv")

    assert main(["ingest", "--workdir", str(ws_dir), "--column-map", str(column_map),
                 str(drop)]) == 0
    output = capsys.readouterr()

    ws = Workspace.open(ws_dir)
    rejected = quarantined(ws).to_pylist()
    assert curated(ws).num_rows == 0
    assert [r["reason"] for r in rejected] == ["card_number_in_text:cc_num"] * 4
    # The 12-digit Maestro number too: the column is evidently card numbers.
    assert sorted(r["customer_id"] for r in rejected) == sorted(map(mask, SPARKOV_CARDS))
    report = ingest_log(ws)
    assert report["quarantine_reasons"] == {"card_number_in_text:cc_num": 4}
    (note,) = report["notes"]
    assert "column 'cc_num' held card numbers in 4 row(s)" in note
    assert '{"cc_num": "card_number"}' in note
    assert "tokenised, and the per-card features key on its token" in note
    assert "cc_num" in output.out and "card_number" in output.out
    assert clear_card_numbers(ws_dir, pan_pieces(SPARKOV_CARDS),
                              output.out + output.err) == []


# --- the rules behind it ----------------------------------------------------------------------
def luhn_completed(payload: str) -> str:
    return payload + next(d for d in "0123456789" if luhn_valid(payload + d))


def luhn_failing(payload: str) -> str:
    return payload + next(d for d in "0123456789" if not luhn_valid(payload + d))


def test_card_number_lengths_12_to_19_are_cards_and_their_masks_hide_enough():
    assert mask(MAESTRO_12) == "6304****7322"  # 4 hidden: ~1,000 Luhn-valid candidates
    for length in range(13, 20):
        card = luhn_completed("4" * (length - 1))
        assert mask(card) == card[:6] + "*" * (length - 10) + card[-4:]
    assert mask("12345678901") == "***********"
    # The free-text scan still starts at 13 digits: a 12-digit reference is no card there.
    assert mask_card_numbers(f"ref {MAESTRO_12}") == f"ref {MAESTRO_12}"


def test_the_card_column_accepts_12_to_19_luhn_valid_digits(workspace, tmp_path):
    cases = {"maestro-12": MAESTRO_12, "grouped-12": "6304 2333 7322",
             "bad-luhn-12": luhn_failing("63042333732"), "short-11": luhn_completed("6304233373"),
             "long-20": luhn_completed("4" * 19), "visa-19": luhn_completed("4" * 18)}
    drop = write_csv(tmp_path / "cards.csv", [row(tx, card_number=card, customer_id="")
                                              for tx, card in cases.items()])

    report = ingest(workspace, [drop])

    stored = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    reasons = {r["transaction_id"]: r["reason"] for r in quarantined(workspace).to_pylist()}
    assert set(stored) == {"maestro-12", "grouped-12", "visa-19"}
    assert reasons == dict.fromkeys(("bad-luhn-12", "short-11", "long-20"), "bad_card_number")
    assert stored["maestro-12"]["card_masked"] == stored["grouped-12"]["card_masked"] == (
        "6304****7322")
    assert stored["maestro-12"]["customer_id"] == stored["grouped-12"]["customer_id"] == (
        expected_customer(workspace, MAESTRO_12))
    assert report.rows_read == 6
    assert clear_card_numbers(workspace.root, pan_pieces(tuple(cases.values()))) == []


def test_a_given_customer_id_wins_and_rows_without_one_are_keyed_on_their_card(
        workspace, tmp_path):
    drop = write_csv(tmp_path / "mixed.csv", [
        row("given", customer_id="C1", card_number=MAESTRO_12),
        row("derived", customer_id=" ", card_number=MAESTRO_12),
        row("neither", customer_id="", card_number="")])

    ingest(workspace, [drop])

    stored = {r["transaction_id"]: r["customer_id"] for r in curated(workspace).to_pylist()}
    assert stored == {"given": "C1", "derived": expected_customer(workspace, MAESTRO_12),
                      "neither": None}


def test_a_key_column_of_numeric_ids_is_not_mistaken_for_cards(workspace, tmp_path):
    """12-digit ids: about a tenth pass Luhn by chance; the column is ids, stored as given."""
    ids = [f"{100000000000 + 7919 * i}" for i in range(40)]
    by_chance = [i for i in ids if luhn_valid(i)]
    assert 0 < len(by_chance) < len(ids) // 2
    drop = write_csv(tmp_path / "ids.csv", [row(f"t{i}", customer_id=c, terminal_id=c)
                                            for i, c in enumerate(ids)])

    report = ingest(workspace, [drop])

    assert report.rows_curated == 40 and report.rows_quarantined == 0
    assert sorted(curated(workspace).column("customer_id").to_pylist()) == sorted(ids)


def test_a_key_column_mostly_of_card_numbers_is_card_data_whole(workspace, tmp_path):
    """Most terminal ids are Luhn-valid 12-19 digit numbers: every 12-19 digit value in
    the column is then card data (masked, row quarantined), the 12-digit and the mistyped
    one included; an ordinary id in it is kept."""
    # Varied digits: a run of zeros would also be found in hashes and times (no leak).
    cards = [*(luhn_completed(p) for p in ("63045192837", "63048275016", "63043908172",
                                           "63047261539")), luhn_completed("411111111111111")]
    mistyped = luhn_failing("411111111111111")
    grouped = "6304 5192 8372"  # cards[0], written in groups
    values = [*cards, mistyped, grouped, "T-ordinary"]
    drop = write_csv(tmp_path / "terminals.csv", [row(f"t{i}", terminal_id=v)
                                                  for i, v in enumerate(values)])

    report = ingest(workspace, [drop])

    assert report.quarantine_reasons == {"card_number_in_text:terminal_id": 7}
    assert curated(workspace).column("terminal_id").to_pylist() == ["T-ordinary"]
    assert sorted(quarantined(workspace).column("terminal_id").to_pylist()) == sorted(
        mask(v) for v in [*cards, mistyped, cards[0]])
    assert clear_card_numbers(workspace.root, pan_pieces((*cards, mistyped))) == []


def test_a_categorical_feature_of_card_numbers_keeps_no_12_digit_card_in_clear(
        workspace, tmp_path):
    """cc_num declared a categorical feature: its 12-digit Maestro number is card data too."""
    drop = write_csv(tmp_path / "feature.csv", [row(f"t{i}") | {"cc_num": card}
                                                for i, card in enumerate(SPARKOV_CARDS)])

    report = ingest(workspace, [drop], {"cc_num": "feature:categorical"})

    assert report.quarantine_reasons == {"card_number_in_text:cc_num": 4}
    assert report.notes and "'cc_num'" in report.notes[0]
    assert clear_card_numbers(workspace.root, pan_pieces(SPARKOV_CARDS)) == []


# --- stream = batch -----------------------------------------------------------------------------
@dataclass
class CapturingModel:
    """A stand-in model: scores zero and keeps the feature matrices it was given."""

    feature_columns: list[str] = field(default_factory=lambda: list(FEATURE_COLUMNS))
    version: int = 1
    threshold: float = 0.5
    matrices: list[np.ndarray] = field(default_factory=list)

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.matrices.append(matrix)
        return np.zeros(matrix.shape[0])

    def explain(self, matrix: np.ndarray) -> list[dict] | None:
        return None


def card_only_landing(path: Path) -> Path:
    """Generated transactions keyed by card only (no customer id), a third of the cards
    12-digit Maestro numbers, as one time-ordered CSV."""
    table = generate_transactions(GeneratorConfig(transactions=500, days=4, customers=25,
                                                  seed=11))
    table = landing_text(table).drop_columns(["customer_id"])
    distinct = sorted(set(table.column("card_number").to_pylist()))
    replaced = {card: luhn_completed(f"6304{i:07d}") if i % 3 == 0 else card
                for i, card in enumerate(distinct)}
    table = table.set_column(table.schema.get_field_index("card_number"), "card_number",
                             pa.array([replaced[c] for c in table.column("card_number")
                                       .to_pylist()], pa.string()))
    table = table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])
    pcsv.write_csv(table, path)
    return path


def test_a_stream_record_with_a_card_and_no_customer_id_gets_the_batch_key_and_features(
        workspace, tmp_path):
    landing = card_only_landing(tmp_path / "cards.csv")

    # Batch: ingest, then the feature table.
    ingest(workspace, [landing])
    build_feature_table(workspace, label_delay_days=7)
    batch_customers = {r["transaction_id"]: r["customer_id"]
                       for r in curated(workspace).to_pylist()}
    batch = {r["transaction_id"]: r
             for r in ds.dataset(workspace.features, format="parquet").to_table().to_pylist()}

    # Stream: the same records, the same token key, one micro-batch after another.
    with landing.open(newline="") as handle:
        records = [RawRecord(line, {k: v or None for k, v in values.items()})
                   for line, values in enumerate(csv.DictReader(handle), start=2)]
    engine = OnlineFeatureEngine(7)
    model = CapturingModel()
    tokeniser = Tokeniser(load_key(workspace.secrets))
    scored = []
    for start in range(0, len(records), 64):
        outcome = process_batch(records[start:start + 64], engine=engine, model=model,
                                tokeniser=tokeniser, scored_before=lambda ids: set(),
                                seen_dead_keys=[],
                                source="cards.csv", run_id="run-1",
                                now=datetime(2026, 12, 3, tzinfo=UTC))
        assert outcome.dead_letters.num_rows == 0
        scored += outcome.scored.select(["transaction_id", "customer_id"]).to_pylist()
    online = np.vstack(model.matrices)

    assert len(scored) == len(batch) == len(records) == 500
    assert all(r["customer_id"] == batch_customers[r["transaction_id"]] for r in scored)
    assert all(r["customer_id"].startswith("card-") for r in scored)
    mismatches = [(name, r["transaction_id"])
                  for i, r in enumerate(scored) for j, name in enumerate(FEATURE_COLUMNS)
                  if not _same(batch[r["transaction_id"]][name], online[i, j])]
    assert not mismatches, mismatches[:5]
    # The comparison covers per-card history, not only first transactions.
    assert max(r["cust_tx_count_7d"] for r in batch.values()) >= 10


def _same(expected: float | None, got: float) -> bool:
    if expected is None:
        return bool(np.isnan(got))
    return bool(np.isclose(expected, got, rtol=1e-9, atol=1e-9))


@pytest.mark.parametrize("column", ["customer_id", "terminal_id"])
def test_the_stream_dead_letters_card_numbers_in_an_id_column_naming_it(workspace, column):
    records = [RawRecord(i + 1, {**row(f"s{i}", card_number=""), column: card})
               for i, card in enumerate(SPARKOV_CARDS)]
    model = CapturingModel()

    outcome = process_batch(records, engine=OnlineFeatureEngine(7), model=model,
                            tokeniser=Tokeniser(load_key(workspace.secrets)),
                            scored_before=lambda ids: set(),
                            seen_dead_keys=[], source="s", run_id="run-1",
                            now=datetime(2026, 12, 3, tzinfo=UTC))

    dead = outcome.dead_letters.to_pylist()
    assert [d["reason"] for d in dead] == [f"card_number_in_text:{column}"] * 4
    assert sorted(d[column] for d in dead) == sorted(map(mask, SPARKOV_CARDS))
    assert outcome.scored.num_rows == 0
    assert clear_card_numbers(workspace.root, pan_pieces(SPARKOV_CARDS),
                              json.dumps(dead, default=str)) == []


def test_the_stream_summary_names_the_card_column_and_the_fix(capsys):
    from rich.console import Console

    from pipelines.cli.commands.stream import _print
    from pipelines.serving.stream.scorer import StreamSummary

    summary = StreamSummary("run-1", dead_letter_reasons={"card_number_in_text:cc_num": 4,
                                                          "bad_amount": 1})
    _print(summary, Console(width=400))

    out = capsys.readouterr().out
    assert "column 'cc_num' held card numbers in 4 row(s)" in out
    assert '{"cc_num": "card_number"}' in out and "bad_amount" in out
    assert out.count("held card numbers") == 1


@pytest.mark.parametrize(("customer_id", "is_card"), [
    (luhn_completed("40000000123"), False),  # a bank's 12-digit account number, Luhn by chance
    (luhn_completed("63041234567"), True),   # a 12-digit Maestro card
    ("C1231006815", False),                  # PaySim-like id
])
def test_one_record_batches_take_only_real_cards_for_cards(workspace, customer_id, is_card):
    """A quiet stream sends one record at a time: a lone 12-digit id that passes Luhn
    by chance (one in ten) must be scored, not dead-lettered as a card; a lone 12-digit
    Maestro card must still never be stored in clear."""
    assert luhn_valid(customer_id) or not customer_id.isdigit()
    record = RawRecord(1, {**row("q1", card_number=""), "customer_id": customer_id})
    outcome = process_batch([record], engine=OnlineFeatureEngine(7), model=CapturingModel(),
                            tokeniser=Tokeniser(load_key(workspace.secrets)),
                            scored_before=lambda ids: set(), seen_dead_keys=[],
                            source="s", run_id="run-1", now=datetime(2026, 12, 3, tzinfo=UTC))
    dead = outcome.dead_letters.to_pylist()
    if is_card:
        assert [d["reason"] for d in dead] == ["card_number_in_text:customer_id"]
        assert dead[0]["customer_id"] == mask(customer_id) and outcome.scored.num_rows == 0
    else:
        assert dead == [] and outcome.scored.column("customer_id").to_pylist() == [customer_id]
