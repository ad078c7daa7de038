"""``fraudops stream``: validation, online features, scores, dead letters, alerts, restarts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main
from pipelines.core.code import unit_dir
from pipelines.core.notifications import ALERTS_TOPIC, FAILURES_TOPIC, read_outbox
from pipelines.core.params import ModelParameters
from pipelines.core.workspace import Workspace
from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops
from pipelines.data.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION
from pipelines.data.labels import write_labels
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.deploy.sample_model import create_request, train_model_files, upload_model
from pipelines.serving.endpoint.handler import InferenceHandler
from pipelines.serving.endpoint.server import EndpointServer
from pipelines.serving.online.reasons import TEMPLATES, explain, render
from pipelines.serving.scoring.batch import SCORED_SCHEMA
from pipelines.serving.stream.scorer import dead_letter_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("transaction_id", "score", "decision", "model_version", "customer_id", "amount")


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_model_files(tmp_path_factory.mktemp("model"), features=FEATURE_COLUMNS)


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> dict[str, Path]:
    """10 days of raw transactions with malformed rows, as one CSV and one JSONL file."""
    root = tmp_path_factory.mktemp("drops")
    table = generate_transactions(
        GeneratorConfig(transactions=900, days=10, fraud_rate_scale=8, seed=5)
    )
    files = {}
    for fmt in ("csv", "jsonl"):
        written = write_landing_drops(table, root / fmt, fmt, malformed_rate=0.03, seed=2)
        lines: list[str] = []
        for i, path in enumerate(sorted(written)):
            text = path.read_text().splitlines()
            lines += text[1:] if fmt == "csv" and i else text
        files[fmt] = root / f"all.{fmt}"
        files[fmt].write_text("\n".join(lines) + "\n")
    files["cards"] = root / "cards.txt"
    files["cards"].write_text("\n".join(sorted(set(table.column("card_number").to_pylist()))))
    return files


def register_model(ws: Workspace, model_dir: Path) -> None:
    uri = upload_model(ws, model_dir, "models/run-1/model.tar.gz")
    registry = LocalModelRegistry(ws.registry_db)
    arn = registry.create_model_package(create_request("fraud-detection", uri), "alice")
    registry.update_model_package(arn["ModelPackageArn"], APPROVED, "bob", "ok")


@pytest.fixture
def ws(workspace, model_dir) -> Workspace:
    register_model(workspace, model_dir)
    return workspace


def stream(ws: Workspace, source: Path | str, *extra: str) -> int:
    return main(["stream", "--input", str(source), "--workdir", str(ws.root),
                 "--model-version", "1", "--threshold", "0.5", "--batch-size", "200", *extra])


def scored(ws: Workspace) -> pa.Table:
    files = sorted(ws.scored.glob("dt=*/stream-*.parquet"))
    if not files:
        return SCORED_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(f) for f in files).sort_by("transaction_id")


def dead_letters(ws: Workspace) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(f) for f in sorted(dead_letter_dir(ws).glob("dt=*/dead-*.parquet"))
    )


def results(ws: Workspace) -> dict[str, list]:
    table = scored(ws)
    return {name: table.column(name).to_pylist() for name in FIELDS}


# --- end to end -------------------------------------------------------------------------------
def test_stream_scores_valid_records_and_dead_letters_the_rest(ws, drops, capsys):
    assert stream(ws, drops["csv"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = scored(ws)
    assert table.schema == SCORED_SCHEMA
    assert table.num_rows == summary["scored"] > 800
    assert len(set(table.column("transaction_id").to_pylist())) == table.num_rows
    dead = dead_letters(ws)
    assert dead.num_rows == summary["dead_letters"] > 0
    reasons = set(dead.column("reason").to_pylist())
    assert {"bad_amount", "bad_timestamp", "bad_card_number"} <= reasons
    # Every record is accounted for: scored, dead-lettered or a counted duplicate.
    assert summary["records"] == summary["scored"] + summary["dead_letters"] + summary["duplicates"]
    assert summary["duplicates"] > 0
    # Partitioned by the transaction's day, like batch scoring.
    for path in ws.scored.glob("dt=*/stream-*.parquet"):
        days = {t.date().isoformat() for t in pq.read_table(path).column("timestamp").to_pylist()}
        assert days == {path.parent.name.removeprefix("dt=")}


def test_alerts_carry_reason_codes_and_open_cases(ws, drops):
    assert stream(ws, drops["jsonl"], "--format", "jsonl") == 0
    alerts = read_outbox(ws.outbox, ALERTS_TOPIC)
    assert alerts, "the sample model flags some transactions at 0.5"
    flagged = set(scored(ws).filter(pa.compute.equal(scored(ws).column("decision"), "alert"))
                  .column("transaction_id").to_pylist())
    for line in alerts:
        message = line["message"]
        assert message["transaction_id"] in flagged
        assert 1 <= len(message["reasons"]) <= 3
        assert all(isinstance(r, str) and "_" not in r.split(" ")[0] for r in message["reasons"])
    from pipelines.serving.alerts.cases import CaseQueue

    assert CaseQueue(ws.cases_db).list_alerts(limit=5)


def test_no_card_number_in_clear_anywhere_after_streaming(ws, drops):
    assert stream(ws, drops["csv"]) == 0
    cards = [c for c in drops["cards"].read_text().splitlines() if c]
    written = [p for p in ws.root.rglob("*") if p.is_file() and "landing" not in p.parts
               and p.suffix != ".key"]
    assert any(p.name == "state.sqlite" for p in written)
    for path in written:
        data = path.read_bytes()
        leaked = [c for c in cards if c.encode() in data]
        assert not leaked, f"{path} holds card numbers in clear"


def test_rerunning_the_same_input_scores_nothing_twice(ws, drops, capsys):
    assert stream(ws, drops["csv"]) == 0
    first = results(ws)
    dead_before = dead_letters(ws).num_rows
    capsys.readouterr()
    assert stream(ws, drops["csv"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scored"] == 0 and summary["dead_letters"] == 0
    assert results(ws) == first
    assert dead_letters(ws).num_rows == dead_before


def test_stdin_and_file_give_the_same_scores(ws, drops, tmp_path, model_dir):
    other = Workspace.open(tmp_path / "other")
    register_model(other, model_dir)
    assert stream(ws, drops["csv"]) == 0
    with open(drops["csv"]) as handle:
        process = subprocess.run(
            [sys.executable, "-m", "pipelines.cli.main", "stream", "--input", "-", "--workdir",
             str(other.root), "--model-version", "1", "--threshold", "0.5"],
            stdin=handle, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
    assert process.returncode == 0, process.stderr
    assert results(other) == results(ws)


# --- restarts ---------------------------------------------------------------------------------
def _start(ws: Workspace) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli.main", "stream", "--input", "-", "--workdir",
         str(ws.root), "--model-version", "1", "--threshold", "0.5", "--batch-size", "40",
         "--max-wait", "0.2", "--commit-interval", "0.5"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=REPO_ROOT, text=True,
    )


def _committed_seq(ws: Workspace) -> int:
    import sqlite3

    path = ws.state_dir / "online" / "state.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as con:
            row = con.execute("SELECT value FROM meta WHERE name = 'checkpoint'").fetchone()
    except sqlite3.OperationalError:
        return 0  # created but not yet initialised
    return int(json.loads(row[0])["seq"]) if row else 0


def _feed_then_interrupt(ws: Workspace, lines: list[str], how: signal.Signals) -> int:
    process = _start(ws)
    half = len(lines) // 2
    process.stdin.write("".join(lines[:half]))
    process.stdin.flush()
    deadline = time.monotonic() + 120
    while _committed_seq(ws) < 3:
        assert time.monotonic() < deadline, process.stderr.read() if process.poll() else "slow"
        time.sleep(0.1)
    process.stdin.write("".join(lines[half : half + 30]))  # a batch in flight when it stops
    process.stdin.flush()
    os.kill(process.pid, how)
    process.wait(timeout=60)
    return process.returncode


def _replay_all(ws: Workspace, lines: list[str]) -> None:
    process = _start(ws)
    out, err = process.communicate("".join(lines), timeout=300)
    assert process.returncode == 0, err


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "clean-stop"])
def test_a_stopped_stream_restarted_on_the_same_input_gives_the_same_results(
    ws, drops, tmp_path, model_dir, how
):
    lines = drops["csv"].read_text().splitlines(keepends=True)
    reference = Workspace.open(tmp_path / "reference")
    register_model(reference, model_dir)
    _replay_all(reference, lines)

    code = _feed_then_interrupt(ws, lines, how)
    assert code == (-signal.SIGKILL if how == signal.SIGKILL else 0)
    interrupted = scored(ws).num_rows
    assert 0 < interrupted < scored(reference).num_rows
    _replay_all(ws, lines)

    assert results(ws) == results(reference)
    expected_dead = sorted(dead_letters(reference).column("source_line").to_pylist())
    assert sorted(dead_letters(ws).column("source_line").to_pylist()) == expected_dead
    alerted = [m["message"]["transaction_id"] for m in read_outbox(ws.outbox, ALERTS_TOPIC)]
    assert len(alerted) == len(set(alerted)), "an alert was raised twice"


# --- scoring over HTTP and failures -----------------------------------------------------------
def test_scoring_through_the_endpoint_equals_in_process(ws, drops, tmp_path, model_dir):
    handler = InferenceHandler.load(model_dir, unit_dir("inference"))
    server = EndpointServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        other = Workspace.open(tmp_path / "http")
        register_model(other, model_dir)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert stream(other, drops["csv"], "--endpoint", url) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert stream(ws, drops["csv"]) == 0
    via_http, in_process = results(other), results(ws)
    assert via_http["transaction_id"] == in_process["transaction_id"]
    np.testing.assert_allclose(via_http["score"], in_process["score"], rtol=1e-6)


def test_a_failed_batch_notifies_and_commits_nothing(ws, drops, capsys):
    code = stream(ws, drops["csv"], "--endpoint", "http://127.0.0.1:9")
    assert code == 2
    assert "unreachable" in capsys.readouterr().err
    failures = read_outbox(ws.outbox, FAILURES_TOPIC)
    assert len(failures) == 1
    assert failures[0]["message"]["step"].startswith("micro-batch 1 ")
    assert "EndpointError" in failures[0]["message"]["error"]
    assert scored(ws).num_rows == 0
    # The next run starts from scratch and scores everything.
    assert stream(ws, drops["csv"]) == 0
    assert scored(ws).num_rows > 800


def test_feedback_labels_reach_the_terminal_risk_state(ws, tmp_path):
    """A confirmed fraud becomes terminal risk once its label is known, not before."""
    def record(i: int, day: int, terminal: str = "T1") -> str:
        return json.dumps({"transaction_id": f"tx{i}", "timestamp": f"2026-03-{day:02d}T10:00:00Z",
                           "customer_id": f"c{i}", "terminal_id": terminal, "amount": "25.00"})

    first = tmp_path / "first.jsonl"
    first.write_text(record(1, 1) + "\n")
    assert stream(ws, first) == 0
    write_labels(ws, [{"transaction_id": "tx1", "is_fraud": 1,
                       "label_known_at": "2026-03-12T00:00:00+00:00",
                       "label_source": "case"}])
    later = tmp_path / "later.jsonl"
    later.write_text(record(2, 11) + "\n" + record(3, 13) + "\n")

    from pipelines.serving.online.store import LocalStateStore

    assert stream(ws, later) == 0
    engine, _ = LocalStateStore.for_workspace(ws).load(7)
    row = {"transaction_id": "probe", "ts_us": 1773662400 * 10**6, "amount": 1.0,
           "customer_id": "probe", "terminal_id": "T1"}  # 2026-03-16: label known
    features = dict(zip(FEATURE_COLUMNS, engine.process(row), strict=True))
    assert features["term_fraud_count_30d"] == 1.0
    assert features["term_fraud_rate_30d"] == 1.0


# --- reason codes -----------------------------------------------------------------------------
def test_every_declared_feature_has_a_reason_template():
    missing = [name for name in FEATURE_COLUMNS if name not in TEMPLATES]
    assert not missing, f"add reason templates for {missing} in pipelines/serving/online/reasons.py"
    context = dict.fromkeys(FEATURE_COLUMNS, 1.0) | {"amount": 12.5, "channel": "ecommerce",
                                                     "country": "FR", "currency": "EUR"}
    for name in FEATURE_COLUMNS:
        sentence = render(name, 1.0, context)
        assert sentence and name not in sentence


def test_reasons_read_like_the_investigators_examples():
    context = {"amount": 620.0, "hour_of_day": 3.0, "channel": "ecommerce"}
    top = [
        {"feature": "amount_to_cust_avg_30d", "value": 6.2, "contribution": 1.3},
        {"feature": "term_fraud_count_30d", "value": 4.0, "contribution": 0.8},
        {"feature": "new_terminal_for_customer", "value": 1.0, "contribution": 0.5},
        {"feature": "is_night", "value": 1.0, "contribution": -0.2},
    ]
    assert explain(top, context) == [
        "amount is 6.2x this card's 30-day average",
        "terminal had 4 confirmed frauds in the last 30 days",
        "first transaction at this terminal",
    ]
    assert render("seconds_since_prev_tx", 1e9, context) == "first transaction seen on this card"
    assert render("seconds_since_prev_tx", 90, context) == (
        "only 1.5 minutes since this card's previous transaction")


# --- the Kinesis Lambda (moto DynamoDB/SQS/Secrets Manager, Stubber for the endpoint) ----------
def _kinesis_event(records: list[object], start: int = 1) -> dict:
    def encode(record: object) -> str:
        import base64

        if isinstance(record, bytes):
            return record.decode()
        return base64.b64encode(json.dumps(record).encode()).decode()

    return {"Records": [
        {"eventID": f"shardId-000000000000:{start + i}", "eventSource": "aws:kinesis",
         "kinesis": {"data": encode(r), "sequenceNumber": str(start + i),
                     "partitionKey": "k"}}
        for i, r in enumerate(records)
    ]}


def deploy_package(sm, endpoint: str, parameters: ModelParameters, run: str = "1") -> str:
    """Register a package carrying ``parameters`` and serve it on ``endpoint`` as the deploy
    handler does (a model created from the package); returns the package ARN."""
    request = create_request("fraud-detection", f"s3://artifacts/models/{run}/model.tar.gz",
                             parameters=parameters)
    arn = sm.create_model_package(**request)["ModelPackageArn"]
    name = f"fraudops-dev-fraud-v{run}"
    sm.create_model(ModelName=name, PrimaryContainer={"ModelPackageName": arn},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker")
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large",
         "InitialInstanceCount": 1}])
    if sm.list_endpoints(NameContains=endpoint)["Endpoints"]:
        sm.delete_endpoint(EndpointName=endpoint)  # moto has no UpdateEndpoint
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=name)
    return arn


SERVED = ModelParameters(label_delay_days=7, feature_set_version=FEATURE_SET_VERSION,
                         alert_threshold=0.5)


@pytest.fixture
def aws_stream():
    """Real moto DynamoDB/SQS/Secrets Manager/SageMaker registry; stubbed sagemaker-runtime
    and lambda clients."""
    import boto3
    from botocore.stub import Stubber
    from moto import mock_aws

    from lambdas.stream_scoring.handler import Resources
    from pipelines.data.ingest.tokenise import Tokeniser
    from pipelines.serving.stream.models import DeployedModelLookup

    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        table = dynamodb.create_table(
            TableName="online-features", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "entity", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "entity", "KeyType": "HASH"}],
        )
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="dead-letters")["QueueUrl"]
        runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
        lambda_client = boto3.client("lambda", region_name="us-east-1")
        sent: list[dict] = []
        runtime.meta.events.register(
            "provide-client-params.sagemaker-runtime.InvokeEndpoint",
            lambda params, **_: sent.append(json.loads(params["Body"])),
        )
        invoked: list[dict] = []
        lambda_client.meta.events.register(
            "provide-client-params.lambda.Invoke",
            lambda params, **_: invoked.append(json.loads(params["Payload"])),
        )
        sm = boto3.client("sagemaker", region_name="us-east-1")
        sm.create_model_package_group(ModelPackageGroupName="fraud-detection")
        package = deploy_package(sm, "fraud-endpoint", SERVED)
        resources = Resources(
            table=table, sqs=sqs, runtime=runtime, lambda_client=lambda_client,
            tokeniser=Tokeniser(b"k" * 32), endpoint_name="fraud-endpoint",
            dead_letter_queue_url=queue_url, alert_function="alert-fn",
            deployed=DeployedModelLookup(sm, "fraud-endpoint"),
        )
        with Stubber(runtime) as endpoint, Stubber(lambda_client) as alerts:
            yield {"resources": resources, "endpoint": endpoint, "alerts": alerts, "sent": sent,
                   "table": table, "sqs": sqs, "queue_url": queue_url, "sm": sm,
                   "package": package, "invoked": invoked}


def _scores_response(scores: list[float]) -> dict:
    from botocore.response import StreamingBody

    body = json.dumps({"predictions": [{"score": s} for s in scores]}).encode()
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}


def _explain_response(n: int) -> dict:
    """inference.py's answer to an explain request: each alerted row's top contributions."""
    from botocore.response import StreamingBody

    top = [{"feature": "amount", "value": 950.0, "contribution": 1.5}]
    body = json.dumps({"predictions": [{"score": 0.9, "bias": -2.0, "top": top}] * n}).encode()
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}


def _transaction_table(n: int) -> pa.Table:
    table = generate_transactions(GeneratorConfig(transactions=300, days=2, customers=4, seed=9))
    return table.slice(0, n)


def _transactions(n: int) -> list[dict]:
    rows = []
    for row in _transaction_table(n).to_pylist():
        row["timestamp"] = row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(row)
    return rows


def test_the_lambda_scores_a_kinesis_batch_and_dead_letters_bad_records(aws_stream):
    from botocore.stub import ANY

    from lambdas.stream_scoring.handler import handler

    good = _transactions(6)
    bad_amount = {**good[0], "transaction_id": "bad-1", "amount": "lots"}
    event = _kinesis_event([*good, bad_amount, b"%%% not base64 %%%"])
    scores = [0.1, 0.95, 0.2, 0.3, 0.1, 0.7]
    aws_stream["endpoint"].add_response(
        "invoke_endpoint", _scores_response(scores),
        {"EndpointName": "fraud-endpoint", "ContentType": "application/json",
         "Accept": "application/json", "Body": ANY},
    )
    aws_stream["endpoint"].add_response("invoke_endpoint", _explain_response(2))
    aws_stream["alerts"].add_response(
        "invoke", {"StatusCode": 202},
        {"FunctionName": "alert-fn", "InvocationType": "Event", "Payload": ANY},
    )
    assert handler(event, None, aws_stream["resources"]) == {"batchItemFailures": []}

    sent = aws_stream["sent"][0]["instances"]
    assert len(sent) == 6 and set(sent[0]) == set(FEATURE_COLUMNS)
    # The two alerted rows go back for their contributions; the alerts carry reasons.
    explained = aws_stream["sent"][1]
    assert explained["explain"] > 0 and len(explained["instances"]) == 2
    (alerted,) = aws_stream["invoked"]
    assert all(row["reasons"] for row in alerted["scored"])
    messages = aws_stream["sqs"].receive_message(QueueUrl=aws_stream["queue_url"],
                                                 MaxNumberOfMessages=10)["Messages"]
    reasons = sorted(json.loads(m["Body"])["reason"] for m in messages)
    assert reasons == ["bad_amount", "malformed_row"]
    assert all(c["card_number"] not in m["Body"] for c in good for m in messages)
    items = aws_stream["table"].scan()["Items"]
    assert sum(i["entity"].startswith("processed#") for i in items) == 6
    assert any(i["entity"].startswith("online#customer_id#") for i in items)
    aws_stream["alerts"].assert_no_pending_responses()


def test_the_lambda_takes_threshold_and_version_from_the_deployed_model(aws_stream):
    from botocore.stub import ANY

    from lambdas.stream_scoring.handler import handler

    scores = [0.1, 0.95, 0.2, 0.3, 0.1, 0.7]
    for alerted in (2, 1):  # two batches; the second model's threshold alerts on one
        aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response(scores))
        aws_stream["endpoint"].add_response("invoke_endpoint", _explain_response(alerted))
        aws_stream["alerts"].add_response(
            "invoke", {"StatusCode": 202},
            {"FunctionName": "alert-fn", "InvocationType": "Event", "Payload": ANY},
        )
    first = _kinesis_event(_transactions(6))
    assert handler(first, None, aws_stream["resources"]) == {"batchItemFailures": []}
    # A new approval is deployed: the next batch follows it with no change to the function.
    package = deploy_package(aws_stream["sm"], "fraud-endpoint",
                             replace(SERVED, alert_threshold=0.9), run="2")
    second = _kinesis_event(_transactions(12)[6:], start=7)
    assert handler(second, None, aws_stream["resources"]) == {"batchItemFailures": []}

    before, after = aws_stream["invoked"]
    assert before["alert_threshold"] == 0.5 and before["model_package_arn"] == aws_stream["package"]
    assert [row["score"] for row in before["scored"]] == [0.95, 0.7]
    assert after["alert_threshold"] == 0.9 and after["model_package_arn"] == package
    assert [row["score"] for row in after["scored"]] == [0.95]
    assert [row["model_version"] for row in before["scored"] + after["scored"]] == [1, 1, 2]


def test_the_lambda_refuses_a_model_trained_on_other_features(aws_stream, capsys):
    from lambdas.stream_scoring.handler import handler

    deploy_package(aws_stream["sm"], "fraud-endpoint",
                   replace(SERVED, feature_set_version="0123456789abcdef"), run="2")
    event = _kinesis_event(_transactions(2))
    result = handler(event, None, aws_stream["resources"])
    assert result == {"batchItemFailures": [{"itemIdentifier": "1"}, {"itemIdentifier": "2"}]}
    assert "trained on feature set 0123456789abcdef" in capsys.readouterr().out
    aws_stream["endpoint"].assert_no_pending_responses()  # nothing was scored


def test_the_lambda_keeps_online_state_across_invocations_and_skips_redeliveries(aws_stream):
    from lambdas.stream_scoring.handler import handler
    from pipelines.serving.online.engine import OnlineFeatureEngine

    rows = _transactions(8)
    first, second = _kinesis_event(rows[:4], 1), _kinesis_event(rows[4:], 5)
    for batch in (first, second):
        aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response([0.1] * 4))
        assert handler(batch, None, aws_stream["resources"]) == {"batchItemFailures": []}
    # Redelivering the first batch scores nothing (the endpoint would be called otherwise).
    assert handler(first, None, aws_stream["resources"]) == {"batchItemFailures": []}

    reference = OnlineFeatureEngine()
    expected = []
    for row in rows:
        ts = int(np.datetime64(row["timestamp"].rstrip("Z"), "us").astype(np.int64))
        values = reference.process({**row, "ts_us": ts})
        expected.append(dict(zip(FEATURE_COLUMNS, values, strict=True)))
    sent = [instance for call in aws_stream["sent"] for instance in call["instances"]]
    assert len(sent) == 8
    for got, want in zip(sent, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_the_lambda_reports_every_record_when_the_endpoint_fails(aws_stream):
    from lambdas.stream_scoring.handler import handler

    event = _kinesis_event(_transactions(3))
    aws_stream["endpoint"].add_client_error("invoke_endpoint", "ModelError", "model crashed")
    result = handler(event, None, aws_stream["resources"])
    assert result == {"batchItemFailures": [{"itemIdentifier": s} for s in ("1", "2", "3")]}
    items = aws_stream["table"].scan()["Items"]
    assert not any(i["entity"].startswith("processed#") for i in items)
    # The retry succeeds and scores all three.
    aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response([0.1] * 3))
    assert handler(event, None, aws_stream["resources"]) == {"batchItemFailures": []}


def test_late_and_forbidden_records_become_dead_letters_with_their_reason(ws, tmp_path):
    def record(tx: str, day: int, **extra: str) -> str:
        return json.dumps({"transaction_id": tx, "timestamp": f"2026-03-{day:02d}T10:00:00Z",
                           "customer_id": "c1", "terminal_id": "T1", "amount": "25.00",
                           **extra})

    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join([
        record("tx-1", 2),
        record("tx-2", 1),  # a day older than tx-1: beyond the allowed lateness (1 h)
        record("tx-3", 3, card_number="4111111111111111", cvv="987"),
    ]) + "\n")
    assert stream(ws, source) == 0
    assert scored(ws).column("transaction_id").to_pylist() == ["tx-1"]
    dead = {r["transaction_id"]: r for r in dead_letters(ws).to_pylist()}
    assert dead["tx-2"]["reason"].startswith("out_of_order:stream late by 86400 s, more than "
                                             "the allowed lateness of 3600 s")
    assert dead["tx-2"]["source_line"] == 2
    assert dead["tx-3"]["reason"] == "forbidden_column"
    assert dead["tx-3"]["amount"] is None and dead["tx-3"]["card_masked"] is None
    for path in dead_letter_dir(ws).rglob("*.parquet"):
        assert b"4111111111111111" not in path.read_bytes()


# --- out of time order ------------------------------------------------------------------------
MINUTE_US = 60_000_000


def _time_ordered(table: pa.Table) -> list[dict]:
    """Landing-text rows (as a producer sends them) in time order, with ``ts_us``."""
    from pipelines.data.datagen.malformed import landing_text

    seconds = table.column("timestamp").cast(pa.int64()).to_pylist()
    rows = [{**row, "ts_us": s * 1_000_000}
            for row, s in zip(landing_text(table).to_pylist(), seconds, strict=True)]
    return sorted(rows, key=lambda r: (r["ts_us"], r["transaction_id"]))


def _in_order_scores(ws: Workspace, rows: list[dict]) -> dict[str, float]:
    """What the deployed model scores on the online features of ``rows`` in time order."""
    from pipelines.serving.online.engine import OnlineFeatureEngine
    from pipelines.serving.scoring.batch import load_model
    from pipelines.serving.stream.core import model_matrix
    from pipelines.serving.stream.models import InProcessModel

    engine = OnlineFeatureEngine()
    features = [engine.process(row) for row in rows]
    model = InProcessModel(load_model(ws, version="1", threshold=0.5))
    scores = model.score(model_matrix(features, engine, model.feature_columns))
    return dict(zip([r["transaction_id"] for r in rows], scores.tolist(), strict=True))


def _interleaved(tmp_path: Path, transactions: int = 600,
                 late_every: int = 0) -> tuple[list[dict], Path]:
    """Transactions (time order) and a JSONL file of them with customers and terminals
    up to 20 minutes out of time order; with ``late_every``, after every so many records a
    copy 1 s older than its customer's newest and one 3 h older, of new entities."""
    from fixtures.arrival import arrival_order, overtaken

    rows = _time_ordered(generate_transactions(
        GeneratorConfig(transactions=transactions, days=3, customers=40, seed=21)))
    arriving = [row for _, row in arrival_order(rows, 20 * MINUTE_US, seed=5)]
    assert overtaken(arriving) > len(rows) // 6, "the input must be out of time order"
    records = []
    for position, row in enumerate(arriving, start=1):
        records.append({k: v for k, v in row.items() if k != "ts_us"})
        if late_every and position % late_every == 0:
            records.append({**records[-1], "transaction_id": f"late-{position}",
                            "timestamp": _iso(row["ts_us"] - 1_000_000)})
            records.append({**records[-2], "transaction_id": f"stale-{position}",
                            "customer_id": f"new-c{position}", "terminal_id": f"new-t{position}",
                            "timestamp": _iso(row["ts_us"] - 3 * 3600 * 1_000_000)})
    source = tmp_path / f"interleaved-{late_every}.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    return rows, source


def test_interleaved_customers_and_terminals_are_all_scored_as_in_time_order(ws, tmp_path):
    """Up to 20 minutes of cross-entity disorder, micro-batches of 37: nothing is
    dead-lettered and every score is the one the time-ordered stream gets."""
    rows, source = _interleaved(tmp_path)
    assert stream(ws, source, "--batch-size", "37") == 0
    assert not list(dead_letter_dir(ws).rglob("*.parquet"))
    table = scored(ws)
    got = dict(zip(table.column("transaction_id").to_pylist(),
                   table.column("score").to_pylist(), strict=True))
    expected = _in_order_scores(ws, rows)
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=0, abs=1e-12)


def test_which_records_are_late_does_not_depend_on_micro_batches_or_commits(
    ws, tmp_path, model_dir
):
    """The same interleaved input with late records: in batches of 5 committed after each,
    or in one batch, the same records are scored (same scores) and dead-lettered (same
    reasons)."""
    _, source = _interleaved(tmp_path, transactions=300, late_every=20)
    one_batch = Workspace.open(tmp_path / "one-batch")
    register_model(one_batch, model_dir)
    assert stream(one_batch, source, "--batch-size", "5000") == 0
    assert stream(ws, source, "--batch-size", "5", "--commit-interval", "0") == 0

    def dead(w: Workspace) -> dict[str, str]:
        rows = dead_letters(w).to_pylist()
        return {r["transaction_id"]: r["reason"] for r in rows}

    assert results(ws) == results(one_batch)
    assert dead(ws) == dead(one_batch)
    assert len(dead(ws)) == 2 * (300 // 20)
    for tx, reason in dead(ws).items():  # 3 h behind their row, more behind the stream
        kind = "customer_id=" if tx.startswith("late-") else "stream late by "
        assert reason.startswith(f"out_of_order:{kind}"), (tx, reason)


def test_records_late_for_their_customer_or_beyond_the_allowed_lateness_are_dead_lettered(
    ws, tmp_path, capsys
):
    def record(tx: str, minute: int, customer: str, terminal: str) -> str:
        return json.dumps({"transaction_id": tx, "timestamp": f"2026-03-02T10:{minute:02d}:00Z",
                           "customer_id": customer, "terminal_id": terminal, "amount": "25.00"})

    source = tmp_path / "late.jsonl"
    source.write_text("\n".join([
        record("tx-1", 30, "c1", "T1"),
        record("tx-2", 29, "c2", "T2"),  # another customer and terminal, 1 min older: scored
        record("tx-3", 25, "c1", "T3"),  # c1's own transaction 5 min older than tx-1
        record("tx-4", 19, "c3", "T4"),  # new entities, but 11 min behind the stream
        record("tx-5", 31, "c1", "T1"),
    ]) + "\n")
    assert stream(ws, source, "--allowed-lateness", "600") == 0
    assert scored(ws).column("transaction_id").to_pylist() == ["tx-1", "tx-2", "tx-5"]
    dead = {r["transaction_id"]: r for r in dead_letters(ws).to_pylist()}
    assert dead.keys() == {"tx-3", "tx-4"}
    assert dead["tx-3"]["reason"] == (
        "out_of_order:customer_id=c1 late by 300 s (its newest transaction is at "
        "2026-03-02T10:30:00Z; features need each entity's transactions in time order)")
    assert dead["tx-4"]["reason"] == (
        "out_of_order:stream late by 660 s, more than the allowed lateness of 600 s behind "
        "the stream's newest transaction (2026-03-02T10:30:00Z)")
    assert dead["tx-3"]["source_line"] == 3
    assert "dead letters: out_of_order │     2" in capsys.readouterr().out


def test_a_negative_allowed_lateness_is_refused(ws, tmp_path, capsys):
    source = tmp_path / "empty.jsonl"
    source.write_text("")
    assert stream(ws, source, "--allowed-lateness", "-1") != 0
    assert "--allowed-lateness must be 0 or more seconds" in capsys.readouterr().err


def test_the_lambda_scores_interleaved_customers_and_dead_letters_late_ones(aws_stream):
    """Within the allowed lateness (the function's ALLOWED_LATENESS_SECONDS) another
    customer's older transaction is scored with in-order features; one older than its
    customer's newest, or beyond the lateness, goes to the dead-letter queue with why."""
    from fixtures.arrival import arrival_order, overtaken

    from lambdas.stream_scoring.handler import allowed_lateness, handler
    from pipelines.serving.online.engine import OnlineFeatureEngine

    table = generate_transactions(GeneratorConfig(transactions=400, days=1, customers=30,
                                                  seed=9))
    rows = _time_ordered(table)[200:212]  # eleven busy minutes
    arriving = [row for _, row in arrival_order(rows, 30 * MINUTE_US, seed=3)]
    assert overtaken(arriving) >= 3
    newest = max(r["ts_us"] for r in rows)
    last = next(r for r in reversed(arriving) if r["ts_us"] == newest)
    customer_late = {**last, "transaction_id": "late-for-customer",
                     "timestamp": _iso(newest - 1_000_000)}
    stream_late = {**last, "transaction_id": "late-for-stream", "customer_id": "new-c",
                   "terminal_id": "new-t", "timestamp": _iso(newest - 3 * 3600 * 1_000_000)}
    resources = replace(aws_stream["resources"],
                        allowed_lateness_seconds=allowed_lateness({"ALLOWED_LATENESS_SECONDS":
                                                                   "7200"}))
    aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response([0.1] * 12))
    event = _kinesis_event([{k: v for k, v in r.items() if k != "ts_us"}
                            for r in [*arriving, customer_late, stream_late]])
    assert handler(event, None, resources) == {"batchItemFailures": []}

    reference = OnlineFeatureEngine()  # time order
    expected = {r["transaction_id"]: dict(zip(FEATURE_COLUMNS, reference.process(r),
                                              strict=True)) for r in rows}
    sent = [instance for call in aws_stream["sent"] for instance in call["instances"]]
    assert len(sent) == 12
    for got, row in zip(sent, arriving, strict=True):
        assert got == pytest.approx(expected[row["transaction_id"]], rel=1e-12, abs=1e-12)
    messages = aws_stream["sqs"].receive_message(QueueUrl=aws_stream["queue_url"],
                                                 MaxNumberOfMessages=10)["Messages"]
    reasons = {json.loads(m["Body"])["transaction_id"]: json.loads(m["Body"])["reason"]
               for m in messages}
    assert reasons.keys() == {"late-for-customer", "late-for-stream"}
    assert reasons["late-for-customer"].startswith(
        f"out_of_order:customer_id={last['customer_id']} late by 1 s")
    assert reasons["late-for-stream"].startswith(
        "out_of_order:stream late by 10800 s, more than the allowed lateness of 7200 s")


def _iso(ts_us: int) -> str:
    return str(np.datetime64(ts_us, "us").astype("datetime64[s]")) + "Z"


def test_the_lambda_reads_its_allowed_lateness_from_the_environment():
    from lambdas.stream_scoring.handler import allowed_lateness
    from pipelines.core.params import DEFAULT_ALLOWED_LATENESS_SECONDS, ParameterError

    assert allowed_lateness({}) == allowed_lateness({"ALLOWED_LATENESS_SECONDS": ""}) \
        == DEFAULT_ALLOWED_LATENESS_SECONDS
    assert allowed_lateness({"ALLOWED_LATENESS_SECONDS": "90"}) == 90
    with pytest.raises(ParameterError, match="ALLOWED_LATENESS_SECONDS must be a whole number"):
        allowed_lateness({"ALLOWED_LATENESS_SECONDS": "5m"})


# --- relative times -------------------------------------------------------------------------
def test_relative_times_count_from_the_time_origin_as_at_ingest(ws, tmp_path, capsys):
    """Seconds from an undisclosed start: refused without an origin, read from the flag
    or the column map's ``time_origin``, as ``fraudops ingest`` reads them."""
    def write(name: str, first: int) -> Path:
        source = tmp_path / name
        source.write_text("".join(
            json.dumps({"transaction_id": f"{name}-{i}", "timestamp": str(first + 60 * i),
                        "customer_id": "c1", "terminal_id": "T1", "amount": "12.50"}) + "\n"
            for i in range(3)))
        return source

    assert stream(ws, write("epoch.jsonl", 0)) == 0  # epoch seconds of 1970: refused
    assert scored(ws).num_rows == 0
    assert {r["reason"] for r in dead_letters(ws).to_pylist()} == {"bad_timestamp"}

    assert stream(ws, write("flag.jsonl", 3600), "--time-origin", "2026-03-01T00:00:00Z") == 0
    column_map = tmp_path / "map.json"
    column_map.write_text(json.dumps({"columns": {}, "time_origin": "2026-03-01T00:00:00Z"}))
    assert stream(ws, write("map.jsonl", 7200), "--column-map", str(column_map)) == 0
    times = {r["transaction_id"]: r["timestamp"] for r in scored(ws).to_pylist()}
    assert times["flag.jsonl-0"] == datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    assert times["map.jsonl-2"] == datetime(2026, 3, 1, 2, 2, tzinfo=UTC)

    with pytest.raises(SystemExit):
        stream(ws, write("bad.jsonl", 0), "--time-origin", "last tuesday")
    assert "is not an ISO-8601 time" in capsys.readouterr().err


def test_paysim_hours_reach_the_stream_as_they_reach_batch_ingest(ws, tmp_path):
    """``--time-unit hours`` (or the map's ``time_unit``): the same rows get the same
    timestamps in the stream as in ``fraudops ingest`` (the validation is shared)."""
    from fixtures.landing import curated
    from fixtures.paysim import COLUMNS, ORIGIN, ORIGIN_TEXT, paysim_csv

    steps = paysim_csv(tmp_path / "paysim.csv", rows=200, ids=True)  # the stream needs ids
    column_map = tmp_path / "paysim.json"
    column_map.write_text(json.dumps({"columns": COLUMNS}))
    flags = ("--column-map", str(column_map), "--time-origin", ORIGIN_TEXT, "--time-unit", "hours")
    assert main(["ingest", str(tmp_path / "paysim.csv"), "--workdir", str(ws.root), *flags]) == 0
    assert stream(ws, tmp_path / "paysim.csv", *flags) == 0

    batch = curated(ws)
    streamed = scored(ws)
    assert streamed.num_rows == batch.num_rows == len(steps)
    expected = {name: ORIGIN + timedelta(hours=step) for name, step in steps.items()}
    assert dict(zip(streamed.column("customer_id").to_pylist(),
                    streamed.column("timestamp").to_pylist(), strict=True)) == expected
    assert dict(zip(streamed.column("transaction_id").to_pylist(),
                    streamed.column("timestamp").to_pylist(), strict=True)) == dict(
        zip(batch.column("transaction_id").to_pylist(), batch.column("timestamp").to_pylist(),
            strict=True))

    # The map's time_unit counts the same, and a unit without any origin is refused.
    column_map.write_text(json.dumps({"columns": COLUMNS, "time_origin": ORIGIN_TEXT,
                                      "time_unit": "hours"}))
    assert stream(ws, tmp_path / "paysim.csv", "--column-map", str(column_map)) == 0
    assert scored(ws).num_rows == len(steps)  # all duplicates of the rows above
    column_map.write_text(json.dumps({"columns": COLUMNS}))
    assert stream(ws, tmp_path / "paysim.csv", "--column-map", str(column_map),
                  "--time-unit", "hours") == 2


# --- records dated ahead of the processing clock --------------------------------------------
FAR_AHEAD = "2099-06-01T00:00:00Z"  # a producer's wrong clock; ingest accepts up to 2100


def _batch_features(table: pa.Table) -> pa.Table:
    """The DuckDB batch feature table of generated transactions (the deployed delay)."""
    from pipelines.data.features.duckdb_engine import compute_features

    table = table.drop_columns(["card_number"])
    index = table.schema.get_field_index("timestamp")
    table = table.set_column(index, "timestamp",
                             table.column("timestamp").cast(pa.timestamp("us", tz="UTC")))
    return compute_features(table, SERVED.label_delay_days)


def _ahead_reason(transaction_id: str, at: str, clock: str, skew: str = "300") -> str:
    ahead = datetime.fromisoformat(at) - datetime.fromisoformat(clock)
    seconds = f"{ahead.days * 86400 + ahead.seconds}.{ahead.microseconds:06d}".rstrip("0")
    return (f"future_timestamp:transaction {transaction_id} at {at} is {seconds.rstrip('.')} s "
            f"ahead of the processing clock ({clock}), more than the allowed future skew of "
            f"{skew} s; correct the sender's clock and send it again (replaying a file dated "
            "ahead of today: fraudops stream --now <its present>)")


def _watermark(ws: Workspace) -> int | None:
    from pipelines.serving.online.store import LocalStateStore

    engine, _ = LocalStateStore.for_workspace(ws).load(7)
    return engine.meta.watermark


def test_a_record_dated_far_ahead_is_dead_lettered_and_the_rest_scored_as_in_batch(
    ws, tmp_path, capsys
):
    """Three days of transactions with one dated 2099 in the middle (an existing customer
    and terminal): it is dead-lettered with why, and every other record is scored with the
    batch features' score; without the bound it would become the stream's newest and every
    record after it would be late by decades."""
    from pipelines.serving.scoring.batch import load_model, score_table

    table = generate_transactions(GeneratorConfig(transactions=300, days=3, customers=20,
                                                  seed=31))
    rows = _time_ordered(table)
    middle = len(rows) // 2
    bad = {**{k: v for k, v in rows[middle].items() if k != "ts_us"},
           "transaction_id": "bad-clock", "timestamp": FAR_AHEAD}
    records = [{k: v for k, v in r.items() if k != "ts_us"} for r in rows]
    records.insert(middle, bad)
    source = tmp_path / "ahead.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    clock = "2026-01-04T00:00:00Z"  # the end of the data: the replay's present

    assert stream(ws, source, "--batch-size", "50", "--now", clock) == 0
    captured = capsys.readouterr()
    table_out = scored(ws)
    got = dict(zip(table_out.column("transaction_id").to_pylist(),
                   table_out.column("score").to_pylist(), strict=True))
    batch = score_table(load_model(ws, version="1", threshold=0.5), _batch_features(table),
                        datetime.now(UTC))
    expected = dict(zip(batch.column("transaction_id").to_pylist(),
                        batch.column("score").to_pylist(), strict=True))
    assert got.keys() == expected.keys() == {r["transaction_id"] for r in rows}
    assert got == pytest.approx(expected, rel=0, abs=1e-12)
    (dead,) = dead_letters(ws).to_pylist()
    assert dead["transaction_id"] == "bad-clock"
    assert dead["reason"] == _ahead_reason("bad-clock", FAR_AHEAD, clock)
    assert dead["source_line"] == middle + 1
    assert bad["card_number"] not in dead["reason"]
    assert _watermark(ws) == max(r["ts_us"] for r in rows)
    assert "dead letters: future_timestamp │     1" in captured.out
    assert "run it again with --now" in captured.err


def test_the_future_skew_bound_accepts_exactly_the_skew_and_refuses_a_microsecond_more(
    ws, tmp_path
):
    def write(tx: str, customer: str) -> Path:
        source = tmp_path / f"{tx}.jsonl"
        source.write_text(json.dumps({"transaction_id": tx, "timestamp": "2026-03-02T10:05:00Z",
                                      "customer_id": customer, "terminal_id": "T1",
                                      "amount": "25.00"}) + "\n")
        return source

    assert stream(ws, write("at-bound", "c1"), "--now", "2026-03-02T10:00:00Z") == 0
    assert scored(ws).column("transaction_id").to_pylist() == ["at-bound"]
    assert not list(dead_letter_dir(ws).rglob("*.parquet"))

    beyond_clock = "2026-03-02T09:59:59.999999Z"
    assert stream(ws, write("beyond", "c2"), "--now", beyond_clock) == 0
    assert scored(ws).column("transaction_id").to_pylist() == ["at-bound"]
    (dead,) = dead_letters(ws).to_pylist()
    assert dead["reason"] == _ahead_reason("beyond", "2026-03-02T10:05:00Z", beyond_clock)
    assert "is 300.000001 s ahead" in dead["reason"]

    # A narrower bound, from the flag: the same minute ahead is now refused.
    assert stream(ws, write("narrow", "c3"), "--now", "2026-03-02T10:04:00Z",
                  "--max-future-skew", "59") == 0
    reasons = {r["transaction_id"]: r["reason"] for r in dead_letters(ws).to_pylist()}
    assert reasons["narrow"] == _ahead_reason("narrow", "2026-03-02T10:05:00Z",
                                              "2026-03-02T10:04:00Z", skew="59")


def test_a_replay_dated_ahead_of_today_needs_its_present_as_the_clock(ws, tmp_path, capsys):
    """Generated data can start after today (--start-date): against today's clock every
    record is refused, nothing is lost and the summary says what to do; the same file
    with --now at its end is scored whole."""
    import datetime as dt

    table = generate_transactions(GeneratorConfig(transactions=120, days=2, customers=10,
                                                  seed=4, start_date=dt.date(2027, 3, 1)))
    source = tmp_path / "future.jsonl"
    source.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "ts_us"}) + "\n"
        for r in _time_ordered(table)))

    assert stream(ws, source, "--now", "2026-12-03T08:00:00Z") == 0
    assert scored(ws).num_rows == 0
    reasons = dead_letters(ws).column("reason").to_pylist()
    assert len(reasons) == 120 and all(r.startswith("future_timestamp:") for r in reasons)
    assert _watermark(ws) is None
    assert "run it again with --now set to its present" in capsys.readouterr().err

    assert stream(ws, source, "--now", "2027-03-03T00:00:00Z") == 0
    assert scored(ws).num_rows == 120


def test_a_future_skew_beyond_the_allowed_lateness_is_refused(ws, tmp_path, capsys):
    from pipelines.core.params import DEFAULT_MAX_FUTURE_SKEW_SECONDS, ParameterError
    from pipelines.serving.stream import StreamSettings

    source = tmp_path / "empty.jsonl"
    source.write_text("")
    assert stream(ws, source, "--max-future-skew", "3601") != 0
    assert ("--max-future-skew (3601 s) must not exceed --allowed-lateness (3600 s)"
            in capsys.readouterr().err)
    assert stream(ws, source, "--allowed-lateness", "60", "--max-future-skew", "61") != 0
    assert "lower --max-future-skew or raise --allowed-lateness" in capsys.readouterr().err
    # Not given, the skew is the default capped at the lateness.
    assert stream(ws, source, "--allowed-lateness", "0") == 0
    assert StreamSettings(allowed_lateness_seconds=0).max_future_skew_seconds == 0
    assert StreamSettings(allowed_lateness_seconds=60).max_future_skew_seconds == 60
    assert StreamSettings().max_future_skew_seconds == DEFAULT_MAX_FUTURE_SKEW_SECONDS
    with pytest.raises(ParameterError, match="StreamSettings.max_future_skew_seconds must be"):
        StreamSettings(max_future_skew_seconds=-1)


def test_the_lambda_dead_letters_a_record_dated_far_ahead_and_scores_the_rest(aws_stream):
    from lambdas.stream_scoring.handler import handler

    table = _transaction_table(8)
    rows = _transactions(8)
    bad = {**rows[3], "transaction_id": "bad-clock", "timestamp": FAR_AHEAD}
    clock = "2026-01-03T00:00:00Z"
    resources = replace(aws_stream["resources"],
                        clock=lambda: datetime.fromisoformat(clock))
    aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response([0.1] * 8))
    event = _kinesis_event([*rows[:4], bad, *rows[4:]])
    assert handler(event, None, resources) == {"batchItemFailures": []}

    features = {row["transaction_id"]: {c: row[c] for c in FEATURE_COLUMNS}
                for row in _batch_features(table).to_pylist()}
    sent = [instance for call in aws_stream["sent"] for instance in call["instances"]]
    assert len(sent) == 8
    for got, row in zip(sent, rows, strict=True):
        assert got == pytest.approx(features[row["transaction_id"]], rel=1e-12, abs=1e-12)
    (message,) = aws_stream["sqs"].receive_message(QueueUrl=aws_stream["queue_url"],
                                                   MaxNumberOfMessages=10)["Messages"]
    body = json.loads(message["Body"])
    assert body["transaction_id"] == "bad-clock"
    assert body["reason"] == _ahead_reason("bad-clock", FAR_AHEAD, clock)
    assert bad["card_number"] not in message["Body"]
    meta = aws_stream["table"].get_item(Key={"entity": "online#meta"})["Item"]
    newest = max(int(np.datetime64(r["timestamp"].rstrip("Z"), "us").astype(np.int64))
                 for r in rows)
    assert json.loads(meta["state"])["watermark"] == newest
    items = aws_stream["table"].scan()["Items"]
    assert not any(i["entity"] == "processed#bad-clock" for i in items)


def test_the_lambda_reads_its_future_skew_from_the_environment(aws_stream):
    from lambdas.stream_scoring.handler import max_future_skew
    from pipelines.core.params import DEFAULT_MAX_FUTURE_SKEW_SECONDS, ParameterError

    assert max_future_skew({}) is max_future_skew({"MAX_FUTURE_SKEW_SECONDS": " "}) is None
    resources = aws_stream["resources"]
    assert replace(resources, max_future_skew_seconds=None).max_future_skew_seconds \
        == DEFAULT_MAX_FUTURE_SKEW_SECONDS
    assert replace(resources, allowed_lateness_seconds=0,
                   max_future_skew_seconds=None).max_future_skew_seconds == 0
    assert max_future_skew({"MAX_FUTURE_SKEW_SECONDS": "60"}) == 60
    with pytest.raises(ParameterError, match="MAX_FUTURE_SKEW_SECONDS must be a whole number"):
        max_future_skew({"MAX_FUTURE_SKEW_SECONDS": "5m"})
    with pytest.raises(ParameterError, match="MAX_FUTURE_SKEW_SECONDS .7200 s. must not exceed "
                                             "ALLOWED_LATENESS_SECONDS .3600 s."):
        replace(aws_stream["resources"], max_future_skew_seconds=7200)


# --- records without a transaction id, and ids under another name ------------------------------
def _id_less_drop(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The same records three ways: without ids, with ids named "tx", and a map for each."""
    rows = _transactions(12)
    plain = tmp_path / "no_ids.csv"
    named = tmp_path / "named_ids.csv"
    columns = ["timestamp", "customer_id", "terminal_id", "amount", "channel", "country"]
    plain.write_text("\n".join([",".join(columns)] + [
        ",".join(str(r[c] or "") for c in columns) for r in rows]) + "\n")
    named.write_text("\n".join([",".join(["tx", *columns])] + [
        ",".join([r["transaction_id"], *(str(r[c] or "") for c in columns)]) for r in rows]) + "\n")
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps({"tx": "transaction_id"}))
    return plain, named, id_map


def _last_summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_records_without_ids_are_scored_once_and_their_replay_skipped(ws, tmp_path, capsys):
    plain, _, _ = _id_less_drop(tmp_path)
    assert stream(ws, plain) == 0
    assert _last_summary(capsys)["scored"] == 12
    ids = scored(ws).column("transaction_id").to_pylist()
    assert len(set(ids)) == 12 and all(i.startswith("drv-") for i in ids)

    assert stream(ws, plain) == 0  # the same records again: recognised by their content
    summary = _last_summary(capsys)
    assert summary["scored"] == 0 and summary["duplicates"] == 12
    assert scored(ws).column("transaction_id").to_pylist() == ids


def test_a_replay_is_skipped_when_the_id_column_has_another_name(ws, tmp_path, capsys):
    _, named, id_map = _id_less_drop(tmp_path)
    assert stream(ws, named, "--column-map", str(id_map)) == 0
    assert _last_summary(capsys)["scored"] == 12
    assert stream(ws, named, "--column-map", str(id_map)) == 0
    summary = _last_summary(capsys)
    assert summary["scored"] == 0 and summary["duplicates"] == 12


def test_the_lambda_scores_records_without_ids_and_skips_their_redelivery(aws_stream):
    from lambdas.stream_scoring.handler import handler

    rows = [{k: v for k, v in row.items() if k != "transaction_id"} for row in _transactions(4)]
    event = _kinesis_event(rows)
    aws_stream["endpoint"].add_response("invoke_endpoint", _scores_response([0.1] * 4))
    assert handler(event, None, aws_stream["resources"]) == {"batchItemFailures": []}
    # Redelivered: no endpoint call is stubbed, so scoring again would fail the batch.
    assert handler(event, None, aws_stream["resources"]) == {"batchItemFailures": []}
    assert sum(len(call["instances"]) for call in aws_stream["sent"]) == 4
    items = aws_stream["table"].scan()["Items"]
    processed = [i["entity"] for i in items if i["entity"].startswith("processed#")]
    assert len(processed) == 4 and all(p.startswith("processed#drv-") for p in processed)
