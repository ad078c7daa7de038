"""Lambda: Kinesis transactions -> validation, online features, endpoint scores, alerts.

The same micro-batch code as ``fraudops stream`` (``pipelines.serving.stream.core``)
with AWS adapters: online state in DynamoDB (``STATE_TABLE``), scores from the
SageMaker endpoint (``ENDPOINT_NAME``), dead letters to SQS
(``DEAD_LETTER_QUEUE_URL``), alerts to the alert Lambda (``ALERT_FUNCTION``),
the card-token key from Secrets Manager (``TOKEN_KEY_SECRET``). Optional:
``SCORED_BUCKET`` (write scored rows to ``s3://<bucket>/scored/transactions/``).

The alert threshold, model version, label delay and feature set version are
those of the model package the endpoint serves (its CustomerMetadataProperties,
see ``pipelines.serving.stream.models.DeployedModelLookup``), looked up on each
invocation, so a new deployment takes effect without redeploying this function.
The threshold travels to the alert Lambda with the alerts it judged.

Retries are safe: each scored transaction is recorded (``processed#<id>``) with
the state, so a batch Kinesis delivers again skips what was already scored.
When the batch cannot be scored (endpoint down, throttling) every record is
reported in ``batchItemFailures`` so Lambda retries it (bisecting on repeat).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipelines.data.features.definitions import FEATURE_COLUMNS, require_current_feature_set
from pipelines.data.ingest.sources import json_text  # the ingest job's JSON -> text rule
from pipelines.data.ingest.tokenise import Tokeniser, key_from_text
from pipelines.serving.online.store import DynamoStateStore
from pipelines.serving.stream.core import BatchOutcome, process_batch
from pipelines.serving.stream.models import (
    DeployedModel,
    DeployedModelLookup,
    SageMakerEndpointModel,
)
from pipelines.serving.stream.source import RawRecord

PROCESSED_PREFIX = "processed#"


@dataclass
class Resources:
    """The AWS clients and settings one invocation needs (built once per container)."""

    table: Any  # boto3 DynamoDB Table
    sqs: Any
    runtime: Any  # sagemaker-runtime
    lambda_client: Any
    tokeniser: Tokeniser
    endpoint_name: str
    dead_letter_queue_url: str
    deployed: DeployedModelLookup  # the package the endpoint serves, with its parameters
    alert_function: str | None = None
    s3: Any = None
    scored_bucket: str | None = None

    @classmethod
    def from_environment(cls) -> Resources:
        import boto3

        secret = boto3.client("secretsmanager").get_secret_value(
            SecretId=os.environ["TOKEN_KEY_SECRET"]
        )["SecretString"]
        bucket = os.environ.get("SCORED_BUCKET") or None
        endpoint_name = os.environ["ENDPOINT_NAME"]
        return cls(
            table=boto3.resource("dynamodb").Table(os.environ["STATE_TABLE"]),
            sqs=boto3.client("sqs"),
            runtime=boto3.client("sagemaker-runtime"),
            lambda_client=boto3.client("lambda"),
            tokeniser=Tokeniser(key_from_text(secret, "TOKEN_KEY_SECRET")),
            endpoint_name=endpoint_name,
            dead_letter_queue_url=os.environ["DEAD_LETTER_QUEUE_URL"],
            deployed=DeployedModelLookup(boto3.client("sagemaker"), endpoint_name),
            alert_function=os.environ.get("ALERT_FUNCTION") or None,
            s3=boto3.client("s3") if bucket else None,
            scored_bucket=bucket,
        )


_RESOURCES: Resources | None = None


def decode(records: list[dict[str, Any]]) -> list[RawRecord]:
    """Kinesis records (base64 JSON objects) -> raw text records; undecodable -> malformed."""
    decoded = []
    for position, record in enumerate(records, start=1):
        try:
            payload = json.loads(base64.b64decode(record["kinesis"]["data"], validate=True))
        except (binascii.Error, ValueError, KeyError, TypeError):
            payload = None
        values = (
            {str(k): json_text(v) for k, v in payload.items()} if isinstance(payload, dict)
            else None
        )
        decoded.append(RawRecord(position, values))
    return decoded


class ProcessedIds:
    """Which of a batch's transactions were scored by an earlier delivery (DynamoDB)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.ids: set[str] = set()

    def load(self, candidates: list[str]) -> None:
        client = self.table.meta.client
        names = sorted({c for c in candidates if c})
        for start in range(0, len(names), 100):
            keys = [{"entity": PROCESSED_PREFIX + n} for n in names[start : start + 100]]
            request: dict | None = {self.table.name: {"Keys": keys}}
            while request:
                response = client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.table.name, []):
                    self.ids.add(item["entity"].removeprefix(PROCESSED_PREFIX))
                request = response.get("UnprocessedKeys") or None

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self.ids

    def record(self, processed: dict[str, int]) -> None:
        for transaction_id, ts_us in processed.items():
            self.table.put_item(Item={"entity": PROCESSED_PREFIX + transaction_id, "ts_us": ts_us})


def _source(records: list[dict[str, Any]]) -> str:
    first = records[0] if records else {}
    shard = str(first.get("eventID", "kinesis")).split(":")[0]
    return f"kinesis:{shard}:{first.get('kinesis', {}).get('sequenceNumber', '')}"


def _send_dead_letters(resources: Resources, outcome: BatchOutcome) -> None:
    rows = outcome.dead_letters.to_pylist()
    for start in range(0, len(rows), 10):
        entries = [
            {"Id": str(start + i), "MessageBody": json.dumps(row, default=str)}
            for i, row in enumerate(rows[start : start + 10])
        ]
        resources.sqs.send_message_batch(QueueUrl=resources.dead_letter_queue_url,
                                         Entries=entries)


def _raise_alerts(resources: Resources, outcome: BatchOutcome, deployed: DeployedModel) -> None:
    if not outcome.alerts or not resources.alert_function:
        return
    payload = {
        "scored": [{**a, "timestamp": a["timestamp"].isoformat()} for a in outcome.alerts],
        # The threshold of the model that gave these scores (lambdas/alert/handler.py).
        "alert_threshold": deployed.parameters.alert_threshold,
        "model_package_arn": deployed.package_arn,
    }
    resources.lambda_client.invoke(
        FunctionName=resources.alert_function,
        InvocationType="Event",
        Payload=json.dumps(payload, default=str).encode(),
    )


def _write_scored(resources: Resources, outcome: BatchOutcome, source: str) -> None:
    if resources.s3 is None or outcome.scored.num_rows == 0:
        return
    import pyarrow.compute as pc

    days = pc.strftime(outcome.scored.column("timestamp"), format="%Y-%m-%d")
    name = source.replace(":", "-")  # deterministic: a redelivered batch overwrites itself
    for day in sorted(set(days.to_pylist())):
        buffer = io.BytesIO()
        pq.write_table(outcome.scored.filter(pc.equal(days, day)), buffer, compression="zstd")
        resources.s3.put_object(
            Bucket=resources.scored_bucket,
            Key=f"scored/transactions/dt={day}/stream-{name}.parquet",
            Body=buffer.getvalue(),
        )


def score_records(records: list[dict[str, Any]], resources: Resources) -> BatchOutcome:
    """One Kinesis batch through the shared micro-batch code, then the AWS sinks."""
    raw = decode(records)
    deployed = resources.deployed.current()
    require_current_feature_set(deployed.parameters.feature_set_version,
                                f"model package {deployed.package_arn}")
    store = DynamoStateStore(resources.table, deployed.parameters.label_delay_days)
    seen = ProcessedIds(resources.table)
    seen.load([(r.values or {}).get("transaction_id", "") or "" for r in raw])
    model = SageMakerEndpointModel(
        endpoint_name=resources.endpoint_name,
        feature_columns=list(FEATURE_COLUMNS),
        threshold=deployed.parameters.alert_threshold,
        version=deployed.version,
        client=resources.runtime,
    )
    source = _source(records)
    outcome = process_batch(
        raw,
        engine=store.engine,
        model=model,
        tokeniser=resources.tokeniser,
        seen_ids=seen,
        seen_dead_keys=[],
        source=source,
        run_id=source,
        before_features=store.prefetch,
    )
    _write_scored(resources, outcome, source)
    _send_dead_letters(resources, outcome)
    _raise_alerts(resources, outcome, deployed)
    store.flush()
    seen.record(outcome.processed)
    return outcome


def handler(event: dict[str, Any], context: object, resources: Resources | None = None) -> dict:
    """Score the batch; on failure report every record so Kinesis delivers it again."""
    global _RESOURCES
    records = event.get("Records", [])
    if resources is None:
        _RESOURCES = _RESOURCES or Resources.from_environment()
        resources = _RESOURCES
    try:
        outcome = score_records(records, resources)
    except Exception as exc:  # noqa: BLE001 - reported to Lambda as a batch failure, then logged
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "records": len(records)}))
        return {
            "batchItemFailures": [
                {"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in records
            ]
        }
    print(json.dumps(outcome.counts))
    return {"batchItemFailures": []}
