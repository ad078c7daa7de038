"""Ingestion: validation, quarantine, dedupe, tokenisation, crash safety, the Glue shell."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.landing import (
    ALL_CARDS,
    BAD_LUHN,
    MASTERCARD,
    VISA,
    curated,
    quarantined,
    row,
    write_csv,
)
from fixtures.pan_scan import clear_card_numbers

from pipelines.cli.main import main as cli_main
from pipelines.core import schema
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import IngestError, ingest, writer
from pipelines.data.ingest.ledger import Ledger
from pipelines.data.ingest.tokenise import KEY_ENV, KEY_FILENAME
from pipelines.data.lake import run_query

REPO_ROOT = Path(__file__).resolve().parent.parent


def lake_snapshot(ws: Workspace) -> dict[str, bytes]:
    """Every file readers can see (curated, quarantine) and the ledger, with its bytes."""
    files = {}
    for root in (ws.curated, ws.quarantine, ws.state_dir / "ingest" / "ledger"):
        for path in root.rglob("*") if root.exists() else []:
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


# --- validation and quarantine --------------------------------------------------------------
BAD_ROWS = {
    "missing_transaction_id": row(""),
    "missing_timestamp": row("bad-ts-missing", timestamp=""),
    "missing_amount": row("bad-amt-missing", amount=""),
    "bad_timestamp": row("bad-ts", timestamp="2024-02-30T10:00:00"),
    "bad_amount": row("bad-amt", amount="12,50"),
    "negative_amount": row("neg-amt", amount="-3"),
    "absurd_amount": row("huge-amt", amount="10000000.01"),
    "bad_currency": row("bad-cur", currency="US$"),
    "bad_card_number": row("bad-luhn", card_number=BAD_LUHN),
    "bad_is_cash": row("bad-cash", is_cash="maybe"),
    "bad_is_fraud": row("bad-fraud", is_fraud="2"),
}


def test_each_class_of_bad_row_is_quarantined_with_reason_line_and_count(workspace, tmp_path):
    rows = [row("good-1"), *BAD_ROWS.values(), row("short-card", card_number="4111111"),
            row("good-2", amount="10000000")]
    source = write_csv(tmp_path / "drop.csv", rows)

    report = ingest(workspace, [source])

    kept = curated(workspace)
    assert sorted(kept.column("transaction_id").to_pylist()) == ["good-1", "good-2"]
    bad = quarantined(workspace).to_pylist()
    by_reason = {}
    for record in bad:
        by_reason.setdefault(record["reason"], []).append(record)
    for reason, bad_row in BAD_ROWS.items():
        (record,) = [r for r in by_reason[reason] if r["transaction_id"] == (
            bad_row["transaction_id"] or None)]
        line = rows.index(bad_row) + 2  # header is line 1
        assert record["source_line"] == line, reason
        assert record["source_file"] == str(source)
        assert record["ingestion_id"] == report.ingestion_id
    # Both wrong-length and failing-Luhn numbers are bad cards, stored masked only.
    assert report.quarantine_reasons["bad_card_number"] == 2
    assert {r["card_masked"] for r in by_reason["bad_card_number"]} == {
        "411111******1112", "*******"}
    # Original text is kept as given (not normalised), so an analyst sees the real input.
    (cur,) = by_reason["bad_currency"]
    assert cur["currency"] == "US$" and cur["amount"] == "25.50"
    assert report.rows_read == len(rows)
    assert report.rows_quarantined == len(rows) - 2
    assert sum(report.quarantine_reasons.values()) == report.rows_quarantined
    assert report.balanced


def test_curated_rows_are_typed_normalised_and_tokenised(workspace, tmp_path):
    source = write_csv(tmp_path / "drop.csv", [
        row("a", card_number="4111 1111 1111 1111", timestamp="2024-03-01T23:30:00-02:00"),
        row("b", card_number=VISA, is_cash="YES", is_fraud="1"),
        row("c", card_number=""),
    ])
    ingest(workspace, [source])
    table = curated(workspace)
    records = {r["transaction_id"]: r for r in table.to_pylist()}
    # An offset timestamp lands on its UTC day.
    assert records["a"]["dt"] == "2024-03-02"
    assert records["a"]["timestamp"].isoformat() == "2024-03-02T01:30:00+00:00"
    assert records["a"]["card_token"] == records["b"]["card_token"]  # same card, same token
    assert len(records["a"]["card_token"]) == 64
    assert records["a"]["card_masked"] == "411111******1111"
    assert records["b"]["is_cash"] is True and records["b"]["is_fraud"] == 1
    assert records["a"]["currency"] == "USD" and records["a"]["country"] == "US"
    assert records["c"]["card_token"] is None and records["c"]["card_masked"] is None
    files = list(workspace.curated.rglob("*.parquet"))
    assert {f.parent.name for f in files} == {"dt=2024-03-01", "dt=2024-03-02"}
    assert pq.read_schema(files[0]).equals(schema.CURATED_SCHEMA)


def test_blank_lines_and_malformed_rows_keep_exact_line_numbers(workspace, tmp_path):
    header = ",".join(schema.LANDING_COLUMNS)
    good = ",".join(row("x").get(c, "") for c in schema.LANDING_COLUMNS)
    text = "\n".join([
        header,
        good.replace(",x,", ",l2,", 1).replace("x,", "l2,", 1),
        "",
        "only,three,fields",
        good.replace("x,", "l5,", 1),
        '"quoted, comma",' + good.split(",", 1)[1],
    ]) + "\n\n"
    source = tmp_path / "messy.csv"
    source.write_text(text)

    report = ingest(workspace, [source])

    assert sorted(curated(workspace).column("transaction_id").to_pylist()) == [
        "l2", "l5", "quoted, comma"]
    (bad,) = quarantined(workspace).to_pylist()
    assert (bad["reason"], bad["source_line"]) == ("malformed_row", 4)
    assert bad["card_masked"] is None  # a malformed line's text is never stored
    assert report.rows_read == 4 and report.balanced


# --- reconciliation and idempotency -----------------------------------------------------------
def test_reconciliation_is_printed_logged_and_recorded_in_the_catalog(workspace, tmp_path):
    rows = [row("a"), row("b"), row("a", amount="99"), row("c", amount="-0.01")]
    source = write_csv(tmp_path / "drop.csv", rows)

    code = cli_main(["ingest", str(source), "--workdir", str(workspace.root)])

    assert code == 0
    (log,) = (workspace.logs / "ingest").glob("ing-*.json")
    record = json.loads(log.read_text())
    assert (record["rows_read"], record["rows_curated"], record["rows_quarantined"],
            record["duplicates_in_batch"]) == (4, 2, 1, 1)
    assert record["quarantine_reasons"] == {"negative_amount": 1}
    assert record["balanced"] is True
    runs = run_query(workspace, "SELECT rows_read, rows_curated, balanced FROM ingestion_runs")
    assert runs.to_pylist() == [{"rows_read": 4, "rows_curated": 2, "balanced": True}]
    # The first copy of a duplicated id wins.
    assert curated(workspace).filter(pa.compute.field("transaction_id") == "a").column(
        "amount").to_pylist() == [25.5]


def test_reingesting_the_same_file_adds_nothing_and_counts_duplicates(workspace, tmp_path):
    rows = [row(f"t{i}") for i in range(5)] + [row("bad", amount="-1")]
    source = write_csv(tmp_path / "drop.csv", rows)
    first = ingest(workspace, [source])
    before = lake_snapshot(workspace)

    second = ingest(workspace, [source])

    assert (first.rows_curated, first.rows_quarantined) == (5, 1)
    assert (second.rows_curated, second.rows_quarantined) == (0, 0)
    assert second.duplicates_seen_before == 5 and second.duplicates_quarantined == 1
    assert second.duplicates_skipped == second.rows_read == 6 and second.balanced
    assert curated(workspace).num_rows == 5 and quarantined(workspace).num_rows == 1
    lake_files = {p for p in lake_snapshot(workspace) if "/ledger/" not in p}
    assert lake_files == {p for p in before if "/ledger/" not in p}
    # A later drop with new and old ids adds only the new ones.
    more = write_csv(tmp_path / "more.csv", [row("t0"), row("t9")])
    third = ingest(workspace, [more])
    assert (third.rows_curated, third.duplicates_seen_before) == (1, 1)


# --- bring your own schema, formats ---------------------------------------------------------------
def test_column_map_own_schema_missing_optional_columns_and_epoch_timestamps(workspace, tmp_path):
    source = tmp_path / "bank.csv"
    source.write_text("TxnRef,When,Client,Shop,Value\n"
                      "r1,1709287200,c9,s3,12.5\n"
                      "r2,1709287200.5,c9,s3,7\n"
                      "r3,not-a-time,c9,s3,7\n")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"TxnRef": "transaction_id", "When": "timestamp",
                                   "Client": "customer_id", "Shop": "terminal_id",
                                   "Value": "amount"}))

    code = cli_main(["ingest", str(source), "--column-map", str(mapping),
                     "--workdir", str(workspace.root)])

    assert code == 0
    records = {r["transaction_id"]: r for r in curated(workspace).to_pylist()}
    assert set(records) == {"r1", "r2"}
    assert records["r1"]["timestamp"].isoformat() == "2024-03-01T10:00:00+00:00"
    assert records["r2"]["timestamp"].microsecond == 500000
    for optional in ("card_token", "currency", "channel", "is_fraud", "is_cash"):
        assert records["r1"][optional] is None
    (bad,) = quarantined(workspace).to_pylist()
    assert (bad["transaction_id"], bad["reason"], bad["source_line"]) == ("r3", "bad_timestamp", 4)


def test_missing_required_column_names_the_file_and_the_fix(workspace, tmp_path):
    source = write_csv(tmp_path / "drop.csv", [row("a")],
                       columns=["transaction_id", "timestamp", "customer_id", "terminal_id"])
    with pytest.raises(IngestError, match=r"drop\.csv: missing required column\(s\) amount"
                                          r".*--column-map"):
        ingest(workspace, [source])
    assert not workspace.curated.exists()


def test_bad_column_map_is_refused_with_valid_targets(workspace, tmp_path, capsys):
    source = write_csv(tmp_path / "drop.csv", [row("a")])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"amount": "amt"}))
    code = cli_main(["ingest", str(source), "--column-map", str(mapping),
                     "--workdir", str(workspace.root)])
    assert code == 2
    assert "maps to unknown column 'amt'; valid targets: transaction_id" in capsys.readouterr().err


def test_jsonl_and_parquet_drops_in_a_directory(workspace, tmp_path):
    drops = workspace.landing
    drops.mkdir(parents=True)
    lines = [json.dumps({"transaction_id": "j1", "timestamp": 1709287200, "customer_id": "c",
                         "terminal_id": "t", "amount": 12.5, "card_number": VISA,
                         "is_cash": True}),
             "",
             "{not json",
             json.dumps({"transaction_id": "j2", "timestamp": "2024-03-01T00:00:00Z",
                         "customer_id": "c", "terminal_id": "t", "amount": -1})]
    (drops / "a.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({
        "transaction_id": ["p1", "p2"],
        "timestamp": pa.array([1709287200_000000, 1709290800_000000], pa.timestamp("us", "UTC")),
        "customer_id": ["c", "c"], "terminal_id": ["t", "t"],
        "amount": [1.0, 2.0], "is_fraud": pa.array([1, 0], pa.int64()),
    }), drops / "b.parquet")

    report = ingest(workspace)  # default: the landing zone

    assert sorted(curated(workspace).column("transaction_id").to_pylist()) == ["j1", "p1", "p2"]
    bad = {(r["source_line"], r["reason"]) for r in quarantined(workspace).to_pylist()}
    assert bad == {(3, "malformed_row"), (4, "negative_amount")}
    assert [s.format for s in report.sources] == ["jsonl", "parquet"]
    p1 = curated(workspace).filter(pa.compute.field("transaction_id") == "p1").to_pylist()[0]
    assert p1["is_fraud"] == 1 and p1["dt"] == "2024-03-01"


def test_forbidden_column_refuses_the_whole_file_and_stores_nothing(workspace, tmp_path):
    good = write_csv(tmp_path / "good.csv", [row("ok")])
    leaky = write_csv(tmp_path / "leaky.csv", [{**row("a"), "CVV2": "123"}])
    with pytest.raises(IngestError) as caught:
        ingest(workspace, [good, leaky])
    message = str(caught.value)
    assert "leaky.csv" in message and "'CVV2'" in message and "nothing" in message
    assert "123" not in message
    assert not workspace.curated.exists() and not workspace.quarantine.exists()
    assert Ledger_seen(workspace) == set()


def Ledger_seen(ws: Workspace) -> set[str]:  # noqa: N802 (reads like the class it wraps)
    layout_state = str(ws.state_dir / "ingest")
    return set(Ledger(pa.fs.LocalFileSystem(), layout_state).seen_transaction_ids()
               .column("key").to_pylist())


# --- card numbers never in clear ---------------------------------------------------
def test_no_card_number_in_clear_anywhere_after_ingestion(workspace, tmp_path):
    rows = [row("a", card_number=VISA), row("b", card_number=MASTERCARD),
            row("c", card_number="4012-8888-8888-1881"), row("d", card_number=BAD_LUHN),
            row("e", card_number=VISA, amount="-5")]
    source = write_csv(workspace.landing / "drop.csv", rows)
    ingest(workspace, [source])
    ingest(workspace, [source])  # second run: duplicates path too
    cli_main(["query", "SELECT * FROM quarantine", "--workdir", str(workspace.root)])

    # Mistyped numbers (BAD_LUHN) must not be stored in clear either.
    assert clear_card_numbers(workspace.root, ALL_CARDS, skip=[workspace.landing]) == []
    assert len(list(workspace.root.rglob("*.parquet"))) >= 3
    masked = set(quarantined(workspace).column("card_masked").to_pylist())
    assert masked == {"411111******1112", "411111******1111"}


def test_key_file_is_created_once_with_0600_and_tokens_are_stable(workspace, tmp_path,
                                                                   monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    ingest(workspace, [write_csv(tmp_path / "a.csv", [row("a")])])
    key_file = workspace.secrets / KEY_FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    ingest(workspace, [write_csv(tmp_path / "b.csv", [row("b")])])
    assert key_file.read_bytes() == key
    tokens = set(curated(workspace).column("card_token").to_pylist())
    assert len(tokens) == 1  # same card in two runs -> the same token

    other = Workspace.open(tmp_path / "other")
    monkeypatch.setenv(KEY_ENV, "a-different-key-from-the-environment")
    ingest(other, [write_csv(tmp_path / "c.csv", [row("c")])])
    assert set(curated(other).column("card_token").to_pylist()).isdisjoint(tokens)
    assert not (other.secrets / KEY_FILENAME).exists()


def test_key_file_readable_by_others_is_refused(workspace, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = workspace.secrets / KEY_FILENAME
    key_file.parent.mkdir(parents=True)
    key_file.write_text("x" * 64)
    key_file.chmod(0o644)
    with pytest.raises(IngestError, match="chmod 600"):
        ingest(workspace, [write_csv(tmp_path / "a.csv", [row("a")])])


# --- crash safety --------------------------------------------------------------------
def two_day_drop(path: Path, prefix: str) -> Path:
    return write_csv(path, [row(f"{prefix}1", timestamp="2024-03-01T10:00:00Z"),
                            row(f"{prefix}2", timestamp="2024-03-02T10:00:00Z"),
                            row(f"{prefix}3", amount="-1")])


def test_exception_between_published_files_leaves_previous_state_and_rerun_completes(
        workspace, tmp_path, monkeypatch):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    before = lake_snapshot(workspace)
    second = two_day_drop(tmp_path / "second.csv", "new")
    real_move = writer._move_into_place
    moved = []

    def crash_after_first(fs, staged):
        if moved:
            raise OSError("disk full (injected)")
        real_move(fs, staged)
        moved.append(staged)

    monkeypatch.setattr(writer, "_move_into_place", crash_after_first)
    with pytest.raises(OSError, match="injected"):
        ingest(workspace, [second])

    assert moved  # the crash really happened after a file was published
    assert lake_snapshot(workspace) == before
    monkeypatch.setattr(writer, "_move_into_place", real_move)
    report = ingest(workspace, [second])
    assert (report.rows_curated, report.rows_quarantined) == (2, 1)
    ids = curated(workspace).column("transaction_id").to_pylist()
    assert sorted(ids) == ["new1", "new2", "old"]


CRASHING_RUN = textwrap.dedent("""
    import sys, time
    from pipelines.data.ingest import ingest, writer
    from pipelines.core.workspace import Workspace

    phase, root, source = sys.argv[1:4]
    target = "write_parquet" if phase == "staging" else "_move_into_place"
    real = getattr(writer, target)
    calls = []

    def hang_after_first(*args, **kwargs):
        if calls:
            print("crash-point", flush=True)
            time.sleep(120)
        calls.append(1)
        return real(*args, **kwargs)

    setattr(writer, target, hang_after_first)
    ingest(Workspace.open(root), [source])
""")


@pytest.mark.parametrize("phase", ["staging", "publish"])
def test_killed_process_leaves_no_half_run_and_rerun_is_consistent(workspace, tmp_path, phase):
    ingest(workspace, [write_csv(tmp_path / "first.csv", [row("old")])])
    before = lake_snapshot(workspace)
    second = two_day_drop(tmp_path / "second.csv", "new")
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), phase, str(workspace.root),
                             str(second)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "crash-point"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    # No id is marked seen for data that was not committed.
    assert Ledger_seen(workspace) == {"old"}
    if phase == "staging":
        assert lake_snapshot(workspace) == before  # the lake was never touched
    report = ingest(workspace, [second])  # recovery runs first, under the lock
    assert report.recovered and report.balanced
    assert (report.rows_curated, report.rows_quarantined) == (2, 1)
    assert lake_snapshot(workspace).keys() >= before.keys()
    ids = curated(workspace).column("transaction_id").to_pylist()
    assert sorted(ids) == ["new1", "new2", "old"]
    assert not any((workspace.lake / ".staging" / "ingest").iterdir())


# --- the Glue job shell ----------------------------------------------------------------
def test_glue_options_resolve_like_get_resolved_options():
    from companions.glue.transactions_etl import OPTIONAL, REQUIRED, get_resolved_options

    argv = ["script.py", "--JOB_NAME", "etl", "--job-bookmark-option", "job-bookmark-disable",
            "--landing-uri", "s3://landing/transactions/", "--lake_uri=s3://lake/"]
    options = get_resolved_options(argv, REQUIRED, OPTIONAL)
    assert options == {"JOB_NAME": "etl", "landing_uri": "s3://landing/transactions/",
                       "lake_uri": "s3://lake/"}
    with pytest.raises(SystemExit):
        get_resolved_options(["script.py", "--JOB_NAME", "etl"], REQUIRED, OPTIONAL)


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_glue_job_ingests_from_s3_with_the_same_engine(moto_endpoint, tmp_path, capsys,
                                                       monkeypatch):
    import boto3
    import pyarrow.fs as pafs

    from companions.glue import transactions_etl

    monkeypatch.delenv(KEY_ENV, raising=False)
    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=moto_endpoint)
    for bucket in ("glue-landing", "glue-lake"):
        s3.create_bucket(Bucket=bucket)
    drop = two_day_drop(tmp_path / "drop.csv", "g")
    s3.upload_file(str(drop), "glue-landing", "transactions/2024-03-01.csv")
    secrets = session.client("secretsmanager", endpoint_url=moto_endpoint)
    secrets.create_secret(Name="fraudops/test/key", SecretString="k" * 64)
    glue = session.client("glue", endpoint_url=moto_endpoint)
    glue.create_database(DatabaseInput={"Name": "fraudops_test"})
    glue.create_table(DatabaseName="fraudops_test", TableInput={
        "Name": "transactions", "PartitionKeys": [{"Name": "dt", "Type": "string"}],
        "StorageDescriptor": {"Columns": [{"Name": "transaction_id", "Type": "string"}],
                              "Location": "s3://glue-lake/curated/transactions/"}})
    argv = ["transactions_etl.py", "--JOB_NAME", "etl", "--landing_uri",
            "s3://glue-landing/transactions/", "--lake_uri", "s3://glue-lake/",
            "--token_key_secret", "fraudops/test/key", "--glue_database", "fraudops_test",
            "--endpoint_url", moto_endpoint, "--region", "us-east-1"]

    assert transactions_etl.main(argv, session=session) == 0

    out = capsys.readouterr().out
    report = json.loads(out.splitlines()[0])
    assert (report["rows_curated"], report["rows_quarantined"], report["balanced"]) == (2, 1, True)
    assert "quarantine does not exist" in out  # only the transactions table was created
    fs = transactions_etl.s3_filesystem({"endpoint_url": moto_endpoint, "region": "us-east-1"})
    written = [i.path for i in fs.get_file_info(pafs.FileSelector("glue-lake", recursive=True))
               if i.type == pafs.FileType.File]
    assert sum(p.startswith("glue-lake/curated/transactions/dt=") for p in written) == 2
    assert any(p.startswith("glue-lake/_logs/ingest/ing-") for p in written)
    assert not any(".staging" in p and p.endswith(".parquet") for p in written)
    partitions = glue.get_partitions(DatabaseName="fraudops_test", TableName="transactions")
    assert sorted(p["Values"][0] for p in partitions["Partitions"]) == ["2024-03-01",
                                                                         "2024-03-02"]
    for path in written:
        with fs.open_input_stream(path) as stream:
            assert VISA.encode() not in stream.read(), path

    assert transactions_etl.main(argv, session=session) == 0  # a retried job adds nothing
    again = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (again["rows_curated"], again["duplicates_skipped"]) == (0, 3)


def test_generated_drops_reconcile_with_the_generators_own_counts(workspace):
    datagen = pytest.importorskip("pipelines.data.datagen")
    config = datagen.GeneratorConfig(transactions=4_000, days=5, seed=7)
    drops = datagen.write_landing_drops(datagen.generate_transactions(config), workspace.landing,
                                        "csv", 0.05, config.seed)

    report = ingest(workspace)

    planted = drops.malformed_counts
    reasons = report.quarantine_reasons
    missing = sum(n for reason, n in reasons.items() if reason.startswith("missing_"))
    assert missing == planted["missing_required"]
    for theirs, ours in [("unparseable_amount", "bad_amount"), ("bad_timestamp", "bad_timestamp"),
                         ("negative_amount", "negative_amount"),
                         ("absurd_amount", "absurd_amount"), ("bad_currency", "bad_currency"),
                         ("invalid_card_number", "bad_card_number")]:
        assert reasons.get(ours, 0) == planted[theirs], theirs
    assert report.duplicates_in_batch == planted["duplicate_transaction_id"]
    assert report.rows_read == drops.rows_written
    assert report.balanced and len(report.sources) == 5
