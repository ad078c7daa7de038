"""Lambda: Kinesis transactions -> validation, online features, endpoint scores, alerts.

The same micro-batch code as ``fraudops stream`` (``pipelines.serving.stream.core``)
with AWS adapters: online state in DynamoDB (``STATE_TABLE``), scores from the
SageMaker endpoint (``ENDPOINT_NAME``), dead letters to SQS
(``DEAD_LETTER_QUEUE_URL``), alerts to the alert Lambda (``ALERT_FUNCTION``),
the card-token key from Secrets Manager (``TOKEN_KEY_SECRET``). Optional:
``SCORED_BUCKET`` (write scored rows to ``s3://<bucket>/scored/transactions/``),
``ALLOWED_LATENESS_SECONDS`` (how far behind the stream's newest transaction one may
arrive, its own entities permitting; empty: the package default,
``pipelines.core.params.DEFAULT_ALLOWED_LATENESS_SECONDS``) and
``MAX_FUTURE_SKEW_SECONDS`` (how far ahead of the function's clock one may be dated;
later ones go to the dead-letter queue as ``future_timestamp`` without touching the
state; empty: ``DEFAULT_MAX_FUTURE_SKEW_SECONDS``).

The alert threshold, model version, label delay and feature set version are
those of the model package the endpoint serves (its CustomerMetadataProperties,
see ``pipelines.serving.stream.models.DeployedModelLookup``), looked up on each
invocation, so a new deployment takes effect without redeploying this function.
The threshold travels to the alert Lambda with the alerts it judged.

Retries and concurrency are safe: a batch is scored in chunks small enough for
one DynamoDB transaction, and each chunk's state changes are written together
with its transactions' ``processed#<id>`` items, conditional on the versions
read (``DynamoStateStore.commit``). A redelivered batch skips what was already
scored; an invocation that lost a race with another (same customer on two
shards) recomputes its chunk from the state the other wrote. Processed ids
expire (DynamoDB TTL on ``expires_at``) after :data:`PROCESSED_TTL_SECONDS`,
well past the stream's 48-hour retention. When a chunk cannot be scored
(endpoint down, throttling) its records and all later ones are reported in
``batchItemFailures`` so Lambda retries them (bisecting on repeat).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq

from pipelines.core.params import (
    DEFAULT_ALLOWED_LATENESS_SECONDS,
    check_max_future_skew_seconds,
    check_whole_seconds,
)
from pipelines.data.features.definitions import FEATURE_COLUMNS, require_current_feature_set
from pipelines.data.ingest.sources import json_text  # the ingest job's JSON -> text rule
from pipelines.data.ingest.tokenise import Tokeniser, key_from_text
from pipelines.serving.online.engine import build_entity_plans
from pipelines.serving.online.store import (
    MAX_TRANSACTION_ITEMS,
    DynamoStateStore,
    StateConflict,
)
from pipelines.serving.stream.core import BatchOutcome, process_batch, wall_clock
from pipelines.serving.stream.models import (
    DeployedModel,
    DeployedModelLookup,
    SageMakerEndpointModel,
)
from pipelines.serving.stream.source import RawRecord

PROCESSED_PREFIX = "processed#"
# Kinesis keeps records 48 hours (infra/ml.yaml); a redelivery is never older.
PROCESSED_TTL_SECONDS = 7 * 86_400
# Recompute a chunk this many times when concurrent invocations keep winning.
COMMIT_ATTEMPTS = 5


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
    allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS
    max_future_skew_seconds: int | None = None  # None: the default capped at the lateness
    clock: Callable[[], datetime] = wall_clock  # what event times are checked against

    def __post_init__(self) -> None:
        self.max_future_skew_seconds = check_max_future_skew_seconds(
            self.max_future_skew_seconds, self.allowed_lateness_seconds,
            "MAX_FUTURE_SKEW_SECONDS", "ALLOWED_LATENESS_SECONDS")

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
            allowed_lateness_seconds=allowed_lateness(os.environ),
            max_future_skew_seconds=max_future_skew(os.environ),
        )


_RESOURCES: Resources | None = None


def _seconds_setting(environ: Mapping[str, str], name: str) -> int | None:
    """Whole seconds from ``environ[name]``; unset or empty: ``None``, the package default,
    so each default is written in one place (pipelines.core.params)."""
    text = environ.get(name, "").strip()
    return check_whole_seconds(text, name) if text else None


def allowed_lateness(environ: Mapping[str, str]) -> int:
    """``ALLOWED_LATENESS_SECONDS`` (infra/ml.yaml's StreamAllowedLatenessSeconds)."""
    lateness = _seconds_setting(environ, "ALLOWED_LATENESS_SECONDS")
    return DEFAULT_ALLOWED_LATENESS_SECONDS if lateness is None else lateness


def max_future_skew(environ: Mapping[str, str]) -> int | None:
    """``MAX_FUTURE_SKEW_SECONDS`` (infra/ml.yaml's StreamMaxFutureSkewSeconds); ``None`` when
    unset: :class:`Resources` then caps the default at the allowed lateness."""
    return _seconds_setting(environ, "MAX_FUTURE_SKEW_SECONDS")


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

    def lookup(self, candidates: list[str]) -> set[str]:
        """Which of ``candidates`` were scored before (``process_batch``'s ``scored_before``)."""
        self.load(candidates)
        return self.ids

    @staticmethod
    def items(processed: dict[str, int], now: float | None = None) -> list[dict[str, Any]]:
        """``processed#<id>`` items for :meth:`DynamoStateStore.commit`, expiring by TTL."""
        expires = int((time.time() if now is None else now) + PROCESSED_TTL_SECONDS)
        return [{"entity": PROCESSED_PREFIX + transaction_id, "ts_us": ts_us,
                 "expires_at": expires} for transaction_id, ts_us in processed.items()]


@functools.cache
def entity_plans() -> tuple:
    """The online engine's entity plans (each transaction writes one item per plan)."""
    return build_entity_plans(0)


def chunk_size(plans: int) -> int:
    """Transactions per chunk so one chunk's writes fit one DynamoDB transaction:
    each touches ``plans`` entity items and adds its processed id; plus the meta item."""
    return max(1, (MAX_TRANSACTION_ITEMS - 1) // (plans + 1))


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


def score_chunk(records: list[dict[str, Any]], resources: Resources,
                deployed: DeployedModel) -> BatchOutcome:
    """One chunk through the shared micro-batch code, committed atomically.

    The sinks (scored rows, dead letters, alerts) run before the commit and are
    idempotent: the scored object is named by the chunk, the alert Lambda drops a
    transaction it has already alerted on. A lost race recomputes the chunk.
    """
    raw = decode(records)
    source = _source(records)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        store = DynamoStateStore(resources.table, deployed.parameters.label_delay_days,
                                 resources.allowed_lateness_seconds)
        seen = ProcessedIds(resources.table)
        model = SageMakerEndpointModel(
            endpoint_name=resources.endpoint_name,
            feature_columns=list(FEATURE_COLUMNS),
            threshold=deployed.parameters.alert_threshold,
            version=deployed.version,
            client=resources.runtime,
        )
        outcome = process_batch(
            raw,
            engine=store.engine,
            model=model,
            tokeniser=resources.tokeniser,
            scored_before=seen.lookup,
            seen_dead_keys=[],
            source=source,
            run_id=source,
            now=resources.clock(),
            max_future_skew_seconds=resources.max_future_skew_seconds,
            before_features=store.prefetch,
        )
        _write_scored(resources, outcome, source)
        _send_dead_letters(resources, outcome)
        _raise_alerts(resources, outcome, deployed)
        try:
            store.commit(ProcessedIds.items(outcome.processed))
            return outcome
        except StateConflict:
            if attempt == COMMIT_ATTEMPTS:
                raise
            print(json.dumps({"conflict": source, "attempt": attempt}))
    raise AssertionError("unreachable")


def handler(event: dict[str, Any], context: object, resources: Resources | None = None) -> dict:
    """Score the batch; on failure report every record so Kinesis delivers it again."""
    global _RESOURCES
    records = event.get("Records", [])
    if resources is None:
        _RESOURCES = _RESOURCES or Resources.from_environment()
        resources = _RESOURCES
    done = 0  # records in chunks already committed
    counts: dict[str, int] = {}
    try:
        deployed = resources.deployed.current()
        require_current_feature_set(deployed.parameters.feature_set_version,
                                    f"model package {deployed.package_arn}")
        size = chunk_size(len(entity_plans()))
        for start in range(0, len(records), size):
            outcome = score_chunk(records[start:start + size], resources, deployed)
            done = min(len(records), start + size)
            for name, value in outcome.counts.items():
                counts[name] = counts.get(name, 0) + value
    except Exception as exc:  # noqa: BLE001 - reported to Lambda as a batch failure, then logged
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "records": len(records),
                          "committed": done}))
        return {
            "batchItemFailures": [
                {"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in records[done:]
            ]
        }
    print(json.dumps(counts))
    return {"batchItemFailures": []}
