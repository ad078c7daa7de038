"""Clear outcomes: what cannot be fixed by retrying is not retried, and says what to change.

Configuration errors and a model the quality gate rejects fail their step at
once with one line (the metric, its value, the threshold and the flag); the
workspace then remembers the rejection for ``model list`` and ``score``. Card
precision@k is reported with and without the cards already known compromised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from test_container_scripts import EVALUATE, load_script

from pipelines.cli.main import main
from pipelines.core.failures import ConfigurationError
from pipelines.workflow.declaration import RetryPolicy, Step, Workflow
from pipelines.workflow.runner import RunContext, WorkflowFailed, run_workflow


@dataclass(frozen=True)
class Done:
    value: int


def test_a_permanent_failure_is_not_retried_and_prints_no_traceback(workspace):
    calls = []

    def misconfigured(ctx):
        calls.append(1)
        raise ConfigurationError("landing.csv: missing required column(s) amount")

    console = Console(record=True, width=200)
    context = RunContext(workspace=workspace, options=None, console=console)
    workflow = Workflow("w", (Step("ingest", "", retry=RetryPolicy(3, 5.0, 2.0)),))
    slept: list[float] = []
    with pytest.raises(WorkflowFailed) as failure:
        run_workflow(workflow, {"ingest": misconfigured}, context, sleep=slept.append)
    outcome = failure.value.outcomes[-1]
    assert (len(calls), outcome.attempts, outcome.permanent, slept) == (1, 1, True, [])
    assert outcome.error == "landing.csv: missing required column(s) amount"
    assert "Traceback" not in console.export_text()


def test_other_failures_still_follow_the_retry_policy(workspace):
    calls = []

    def flaky(ctx):
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("throttled")
        return Done(1)

    context = RunContext(workspace=workspace, options=None, console=Console(quiet=True))
    workflow = Workflow("w", (Step("flaky", "", retry=RetryPolicy(3, 1.0, 2.0)),))
    [outcome] = run_workflow(workflow, {"flaky": flaky}, context, sleep=lambda s: None)
    assert outcome.attempts == 2 and not outcome.permanent


def test_a_file_without_a_required_column_fails_ingest_once_in_one_line(tmp_path, capsys):
    source = tmp_path / "no_amount.csv"
    source.write_text("transaction_id,timestamp,customer_id,terminal_id\n"
                      "t1,2026-01-01T00:00:00Z,c1,m1\n")
    code = main(["run", "--workdir", str(tmp_path / "ws"), "--input", str(source)])
    out = capsys.readouterr().out
    assert code == 1
    assert "ingest failed (not retried)" in out and "amount" in out
    assert "attempt 2" not in out and "Traceback" not in out


# --- card precision@k without the cards known to be compromised ------------------------


def test_card_precision_leaves_out_cards_already_known_compromised():
    evaluate = load_script(EVALUATE)
    day1, day2 = pd.Timestamp("2026-03-01"), pd.Timestamp("2026-03-02")
    frame = pd.DataFrame({
        "day": [day1, day1, day1, day2, day2, day2],
        "card": ["a", "b", "c", "a", "b", "c"],
        "y": [1, 0, 0, 1, 1, 0],
        "s": [0.9, 0.2, 0.1, 0.9, 0.8, 0.1],
    })
    args = (frame["day"], frame["card"], frame["y"], frame["s"].to_numpy(), 1)
    all_cards, _ = evaluate.card_precision_at_k(*args, remove_detected=False)
    assert all_cards == 1.0  # card a tops both days
    # Card a's fraud was labelled before the test window: it is blocked, not found.
    known = pd.Series([day1 - pd.Timedelta(days=3)], index=["a"])
    removed, per_day = evaluate.card_precision_at_k(*args, remove_detected=False,
                                                    known_at=known)
    assert [d["precision"] for d in per_day] == [0.0, 1.0]  # day 1: b ranks first, genuine
    assert removed == 0.5
    # Known only from day 2 on: day 1 still counts it.
    later = pd.Series([day2], index=["a"])
    _, per_day = evaluate.card_precision_at_k(*args, remove_detected=False, known_at=later)
    assert [d["precision"] for d in per_day] == [1.0, 1.0]


def test_without_card_ids_card_precision_is_not_reported():
    evaluate = load_script(EVALUATE)
    rng = np.random.default_rng(0)
    scored = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(200)],
        "customer_id": [None] * 200,
        "timestamp": pd.date_range("2026-03-01", periods=200, freq="min", tz="UTC"),
        "is_fraud": (rng.random(200) < 0.1).astype(int),
    })
    scored["score"] = rng.random(200)
    metrics = evaluate.compute_metrics(scored, "is_fraud", 0.5, 100, True)
    block = metrics["binary_classification_metrics"]["card_precision_at_k"]
    assert block["value"] is None and "no card ids" in block["note"]


# --- a rejected model, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def rejected(tmp_path_factory):
    from pipelines.core.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("rejected") / "ws")
    code = main(["run", "--workdir", str(ws.root), "--transactions", "20000", "--days", "30",
                 "--quality-threshold", "0.99"])
    return code, ws


@pytest.mark.slow
def test_a_rejected_model_gives_one_line_and_no_retry(rejected, capsys):
    code, ws = rejected
    assert code == 1
    from pipelines.model.executor.store import ExecutionStore

    store = ExecutionStore(ws.executions)
    executions = store.list_pipeline_executions()["PipelineExecutionSummaries"]
    store.close()
    assert len(executions) == 1  # not re-run


@pytest.mark.slow
def test_the_rejection_line_names_metric_value_threshold_and_flag(rejected):
    from pipelines.fraud.local_run import last_rejection

    _, ws = rejected
    rejection = last_rejection(ws)
    line = rejection.line()
    assert "\n" not in line
    assert re.search(r"test average precision 0\.\d{3} is below the threshold 0\.990", line)
    assert "--quality-threshold" in line


@pytest.mark.slow
def test_model_list_and_score_say_the_last_model_was_rejected(rejected, capsys):
    _, ws = rejected
    assert main(["model", "list", "--workdir", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "registered nothing" in out and "rejected by the quality gate" in out
    assert main(["score", "--workdir", str(ws.root), "--date", "2026-01-30"]) != 0
    captured = capsys.readouterr()
    assert "rejected by the quality gate" in captured.out + captured.err


@pytest.mark.slow
def test_query_exports_a_result_as_parquet(rejected, tmp_path, capsys):
    _, ws = rejected
    target = tmp_path / "out" / "by_day.parquet"
    code = main(["query", "--workdir", str(ws.root), "SELECT dt, count(*) AS n FROM transactions "
                 "GROUP BY dt ORDER BY dt", "--format", "parquet", "--output", str(target)])
    assert code == 0
    table = pq.read_table(target)
    assert table.column_names == ["dt", "n"] and table.num_rows >= 28
    assert f"written to {target}" in capsys.readouterr().err


def test_parquet_needs_an_output_file(workspace, capsys):
    assert main(["query", "--workdir", str(workspace.root), "SELECT 1",
                 "--format", "parquet"]) != 0
    assert "--output FILE.parquet" in capsys.readouterr().err
