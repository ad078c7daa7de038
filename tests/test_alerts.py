"""Alerts: threshold, severity, per-card dedupe, case workflow, labels, the Lambda."""

from __future__ import annotations

import json
from datetime import timedelta

import boto3
import pytest
from moto import mock_aws

from pipelines.cli.main import main
from pipelines.core.notifications import ALERTS_TOPIC, OutboxNotifier, read_outbox
from pipelines.data.labels import read_labels
from pipelines.serving.alerts import AlertPolicy, CaseError, CaseQueue, raise_alerts, severity_of


def _row(tx, card, ts, score, amount=50.0):
    return {"transaction_id": tx, "customer_id": card, "terminal_id": "T1", "amount": amount,
            "timestamp": ts, "score": score, "model_version": "3",
            "reasons": ["amount is 6.2x this card's 30-day average"]}


SCORED = [
    _row("t1", "c1", "2026-02-01T10:00:00+00:00", 0.95),
    _row("t2", "c1", "2026-02-01T11:00:00+00:00", 0.70),   # same card within 24 h: grouped
    _row("t3", "c2", "2026-02-01T12:00:00+00:00", 0.40),   # below threshold: no alert
    _row("t4", "c1", "2026-02-03T09:00:00+00:00", 0.60),   # same card, 2 days later: new alert
    _row("t5", "c3", "2026-02-01T13:00:00+00:00", 0.55, amount=12_000.0),
]
POLICY = AlertPolicy(threshold=0.5)  # in production: the scoring model's threshold


@pytest.fixture
def queue(workspace):
    return CaseQueue(workspace.cases_db)


def test_alerts_are_raised_deduplicated_and_notified(workspace, queue):
    notifier = OutboxNotifier(workspace.outbox)
    counts = raise_alerts(SCORED, AlertPolicy(threshold=0.5), queue, notifier)
    assert counts == {"scored": 5, "alerts": 3, "grouped": 1, "already_raised": 0, "notified": 3}
    alerts = queue.list_alerts()
    assert {a["transaction_id"] for a in alerts} == {"t1", "t4", "t5"}
    [first] = [a for a in alerts if a["transaction_id"] == "t1"]
    assert first["grouped"] == 1 and first["reasons"]
    sent = read_outbox(workspace.outbox, ALERTS_TOPIC)
    assert [m["message"]["transaction_id"] for m in sent] == ["t1", "t5", "t4"]


def test_rerun_raises_nothing_twice(workspace, queue):
    notifier = OutboxNotifier(workspace.outbox)
    raise_alerts(SCORED, POLICY, queue, notifier)
    again = raise_alerts(SCORED, POLICY, queue, notifier)
    assert again["alerts"] == 0 and again["already_raised"] == 4
    assert len(read_outbox(workspace.outbox, ALERTS_TOPIC)) == 3


def test_severity_bands():
    policy = AlertPolicy(threshold=0.5, high_threshold=0.9)
    assert severity_of(0.95, 10.0, policy) == "high"
    assert severity_of(0.6, 10.0, policy) == "medium"
    assert severity_of(0.6, 10_000.0, policy) == "high"


def test_dedupe_window_is_configurable(workspace, queue):
    policy = AlertPolicy(threshold=0.5, dedupe_window=timedelta(minutes=30))
    counts = raise_alerts(SCORED[:2], policy, queue, OutboxNotifier(workspace.outbox))
    assert counts["alerts"] == 2 and counts["grouped"] == 0


def test_case_moves_open_in_review_closed_and_becomes_a_label(workspace, queue):
    raise_alerts(SCORED, POLICY, queue, OutboxNotifier(workspace.outbox))
    case_id = queue.list_alerts()[0]["case_id"]
    wd = ["--workdir", str(workspace.root)]
    assert main(["case", "assign", str(case_id), "--to", "ana", "--actor", "lead", *wd]) == 0
    assert queue.show(case_id).status == "in_review"
    assert main(["case", "note", str(case_id), "--note", "called customer", *wd]) == 0
    assert main(["case", "close", str(case_id), "--disposition", "confirmed_fraud",
                 "--note", "customer denies", "--actor", "ana", *wd]) == 0
    case = queue.show(case_id)
    assert case.status == "closed" and case.disposition == "confirmed_fraud"
    assert [e["action"] for e in case.events] == ["opened", "assigned", "note", "closed"]
    from pipelines.compliance.audit import list_entries, verify

    audited = [e for e in list_entries(workspace) if e["action"].startswith("case.")]
    assert [(e["action"], e["actor"]) for e in audited] == [
        ("case.assign", "lead"), ("case.note", audited[1]["actor"]), ("case.close", "ana")]
    assert audited[-1]["details"]["disposition"] == "confirmed_fraud"
    assert verify(workspace).ok
    labels = read_labels(workspace).to_pylist()
    assert labels[0]["transaction_id"] == case.alert["transaction_id"]
    assert labels[0]["is_fraud"] == 1
    assert labels[0]["label_source"] == f"case:{case_id}:confirmed_fraud"


def test_closed_case_cannot_be_closed_again_or_reassigned(workspace, queue):
    raise_alerts(SCORED, POLICY, queue, OutboxNotifier(workspace.outbox))
    case_id = queue.list_alerts()[0]["case_id"]
    queue.close(case_id, "false_positive", "ana")
    with pytest.raises(CaseError, match="already closed"):
        queue.close(case_id, "confirmed_fraud", "bob")
    with pytest.raises(CaseError, match="cannot be assigned"):
        queue.assign(case_id, "bob", "lead")
    with pytest.raises(CaseError, match="unknown disposition"):
        queue.close(queue.list_alerts()[1]["case_id"], "maybe", "ana")


def test_unknown_case_is_a_clear_cli_error(workspace, capsys):
    assert main(["case", "show", "99", "--workdir", str(workspace.root)]) == 2
    assert "no case 99" in capsys.readouterr().err


def test_alerts_list_prints_the_queue(workspace, queue, capsys):
    raise_alerts(SCORED, POLICY, queue, OutboxNotifier(workspace.outbox))
    assert main(["alerts", "list", "--workdir", str(workspace.root)]) == 0
    assert "c1" in capsys.readouterr().out


@pytest.fixture
def alert_lambda_aws(monkeypatch):
    """moto: the state table and alerts topic the alert Lambda's environment names."""
    with mock_aws():
        boto3.resource("dynamodb", region_name="us-east-1").create_table(
            TableName="state", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "entity", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "entity", "KeyType": "HASH"}],
        )
        topic = boto3.client("sns", region_name="us-east-1").create_topic(Name="alerts")
        monkeypatch.setenv("STATE_TABLE", "state")
        monkeypatch.setenv("ALERTS_TOPIC_ARN", topic["TopicArn"])
        monkeypatch.delenv("LAKE_BUCKET", raising=False)
        yield topic["TopicArn"]


def test_alert_lambda_dedupes_in_dynamodb_and_publishes_to_sns(alert_lambda_aws, monkeypatch):
    from lambdas.alert.handler import handler

    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    topic = alert_lambda_aws
    queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    monkeypatch.setenv("LAKE_BUCKET", "lake")

    event = {"scored": SCORED, "alert_threshold": 0.5, "model_package_arn": "arn:mp/3"}
    first = handler(event, None)
    retried = handler(event, None)
    assert first["alerts"] == 3 and first["grouped"] == 1
    assert retried["alerts"] == 0 and retried["already_raised"] == 4
    bodies = [json.loads(m["Body"]) for m in
              sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]]
    assert len(bodies) == 3
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="alerts/")["Contents"]]
    assert {k.split("/")[1] for k in keys} == {"dt=2026-02-01", "dt=2026-02-03"}
    cases = s3.list_objects_v2(Bucket="lake", Prefix="cases/")["Contents"]
    assert len(cases) == first["cases_opened"] == 3  # one per primary alert, none on retry
    import io

    import pyarrow.parquet as pq

    written = [pq.read_table(io.BytesIO(s3.get_object(Bucket="lake", Key=k)["Body"].read()))
               for k in keys]
    assert sorted(t for table in written for t in table["transaction_id"].to_pylist()) == [
        "t1", "t2", "t4", "t5"]


def test_alert_lambda_applies_the_threshold_the_scoring_model_sent(alert_lambda_aws,
                                                                   monkeypatch):
    from lambdas.alert.handler import handler

    monkeypatch.setenv("ALERT_THRESHOLD", "0.1")  # a stale stack setting: ignored
    counts = handler({"scored": SCORED, "alert_threshold": 0.9}, None)
    assert counts["alerts"] == 1  # only t1 (0.95) reaches the model's 0.9
    with pytest.raises(ValueError, match="the event carries no alert_threshold"):
        handler({"scored": SCORED}, None)
    with pytest.raises(ValueError, match=r"alert_threshold \(model package m\) must be"):
        handler({"scored": SCORED, "alert_threshold": "high", "model_package_arn": "m"}, None)


def test_an_alert_policy_refuses_a_threshold_outside_0_1():
    with pytest.raises(ValueError, match=r"AlertPolicy.threshold must be a number in \[0, 1\]"):
        AlertPolicy(threshold=1.5)


def test_feedback_command_loads_labels_and_rejects_bad_rows(workspace, tmp_path, capsys):
    good = tmp_path / "chargebacks.csv"
    good.write_text("transaction_id,is_fraud,label_known_at\n"
                    "t1,1,2026-02-20T00:00:00+00:00\nt2,0,2026-02-21T00:00:00+00:00\n")
    wd = ["--workdir", str(workspace.root)]
    assert main(["feedback", str(good), *wd]) == 0
    assert main(["feedback", str(good), *wd]) == 0  # idempotent
    labels = read_labels(workspace).to_pylist()
    assert [(r["transaction_id"], r["is_fraud"]) for r in labels] == [("t1", 1), ("t2", 0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("transaction_id,is_fraud,label_known_at\nt3,maybe,2026-02-20T00:00:00+00:00\n")
    assert main(["feedback", str(bad), *wd]) == 2
    assert "bad.csv: label 1 (t3): is_fraud must be 0 or 1" in capsys.readouterr().err


def test_a_label_corrected_later_feeds_features_once(workspace):
    """A chargeback later reversed: the feature build sees only the latest label."""
    from pipelines.data.features.build import read_labels as labels_for_features
    from pipelines.data.labels import write_labels

    write_labels(workspace, [{"transaction_id": "t1", "is_fraud": 1,
                              "label_known_at": "2026-02-10T00:00:00+00:00"}])
    write_labels(workspace, [{"transaction_id": "t1", "is_fraud": 0,
                              "label_known_at": "2026-02-20T00:00:00+00:00"}])
    table = labels_for_features(workspace)
    assert table.column_names == ["transaction_id", "is_fraud", "label_known_at"]
    assert table.to_pylist()[0]["is_fraud"] == 0 and table.num_rows == 1
