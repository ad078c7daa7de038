"""The stream Lambda's DynamoDB state under concurrent invocations (moto DynamoDB).

Two invocations read the same customer's state; the second commits first. The
first one's commit is refused (versions changed), so it recomputes from the
state the other wrote: no update is lost, and its features are those of a
single reader seeing every transaction in order.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.serving.online.engine import OnlineFeatureEngine
from pipelines.serving.online.store import DynamoStateStore, StateConflict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_stream as stream_tests  # noqa: E402

aws_stream = stream_tests.aws_stream  # the shared fixture (moto DynamoDB, stubbed endpoint)


def _one_customers_rows(n: int) -> list[dict]:
    rows = stream_tests._transactions(300)
    customer = rows[0]["customer_id"]
    return [r for r in rows if r["customer_id"] == customer][:n]


def test_a_concurrent_update_is_never_lost(aws_stream):
    from lambdas.stream_scoring.handler import PROCESSED_PREFIX, handler

    rows = _one_customers_rows(4)
    earlier, later = rows[:2], rows[2:]  # same customer: same state items
    first = stream_tests._kinesis_event(later, start=10)
    second = stream_tests._kinesis_event(earlier, start=1)
    for _ in range(3):  # first (refused), second, first again
        aws_stream["endpoint"].add_response("invoke_endpoint",
                                            stream_tests._scores_response([0.1, 0.1]))
    client = aws_stream["table"].meta.client
    raced = []

    def the_other_invocation_commits_first(**_):
        if not raced:
            raced.append(True)
            assert handler(second, None, aws_stream["resources"]) == {"batchItemFailures": []}

    client.meta.events.register("before-call.dynamodb.TransactWriteItems",
                                the_other_invocation_commits_first)
    assert handler(first, None, aws_stream["resources"]) == {"batchItemFailures": []}
    aws_stream["endpoint"].assert_no_pending_responses()

    # The first invocation's final features are a single ordered reader's.
    reference = OnlineFeatureEngine()
    expected = []
    for row in rows:
        ts = int(np.datetime64(row["timestamp"].rstrip("Z"), "us").astype(np.int64))
        expected.append(dict(zip(FEATURE_COLUMNS, reference.process({**row, "ts_us": ts}),
                                 strict=True)))
    refused, other, retried = (call["instances"] for call in aws_stream["sent"])
    for got, want in zip([*other, *retried], expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert refused != retried  # computed without the other invocation's transactions

    items = {i["entity"]: i for i in aws_stream["table"].scan()["Items"]}
    processed = [i for k, i in items.items() if k.startswith(PROCESSED_PREFIX)]
    assert len(processed) == 4
    assert all(int(i["expires_at"]) > time.time() + 86_400 for i in processed)  # TTL set
    customer = [i for k, i in items.items() if k.startswith("online#customer_id#")]
    assert [int(i["version"]) for i in customer] == [2]  # written twice, once by each


def test_a_commit_over_a_newer_version_writes_nothing(aws_stream):
    table = aws_stream["table"]
    row = {**_one_customers_rows(1)[0], "ts_us": 1_700_000_000_000_000}
    reader, racer = DynamoStateStore(table, 7), DynamoStateStore(table, 7)
    for store in (reader, racer):
        store.prefetch([row])
        store.engine.process(row)
    racer.commit([{"entity": "processed#racer"}])
    with pytest.raises(StateConflict):
        reader.commit([{"entity": "processed#reader"}])
    entities = {i["entity"] for i in table.scan()["Items"]}
    assert "processed#reader" not in entities and "processed#racer" in entities


def test_a_chunk_fits_one_dynamodb_transaction():
    from lambdas.stream_scoring.handler import chunk_size, entity_plans
    from pipelines.serving.online.store import MAX_TRANSACTION_ITEMS

    plans = len(entity_plans())
    assert chunk_size(plans) * (plans + 1) + 1 <= MAX_TRANSACTION_ITEMS
