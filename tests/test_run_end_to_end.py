"""`fraudops run` from an empty workspace: the whole workflow, as `make run` runs it."""

from __future__ import annotations

import re
import urllib.request

import pytest

from pipelines.cli.main import main
from pipelines.core.identity import current_user
from pipelines.core.params import DEFAULT_ALERT_THRESHOLD, DEFAULT_LABEL_DELAY_DAYS, ModelParameters
from pipelines.data.features.definitions import FEATURE_SET_VERSION
from pipelines.data.lake.query import run_query
from pipelines.model.registry import LocalModelRegistry
from pipelines.serving.deploy.local import read_endpoint_state, stop_endpoint_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from pipelines.core.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("run") / "ws")
    code = main(["run", "--workdir", str(ws.root), "--transactions", "40000", "--days", "35",
                 "--malformed-rate", "0.005"])
    yield code, ws
    state = read_endpoint_state(ws)
    if state and state.get("pid"):
        stop_endpoint_process(int(state["pid"]))


def test_run_exits_zero_with_an_approved_deployed_model(finished_run):
    code, ws = finished_run
    assert code == 0
    registry = LocalModelRegistry(ws.registry_db)
    [package] = registry.list_model_packages("fraud-detection")["ModelPackageSummaryList"]
    assert package["ModelApprovalStatus"] == "Approved"
    decisions = registry.list_decisions(package["ModelPackageArn"])
    # A demo approval by the trainer's own account, recorded and described as such.
    last = decisions[-1]
    assert (last["Kind"], last["ApproverDisplayName"]) == ("demo", "demo-approver")
    assert last["Approver"] == current_user()
    # The package carries the run's parameters onward (copied from evaluation.json).
    described = registry.describe_model_package(package["ModelPackageArn"])
    assert described["ApprovalKind"] == "demo"
    assert ModelParameters.from_metadata(described["CustomerMetadataProperties"], "v1") == (
        ModelParameters(DEFAULT_LABEL_DELAY_DAYS, FEATURE_SET_VERSION, DEFAULT_ALERT_THRESHOLD))
    state = read_endpoint_state(ws)
    assert state["model_package_arn"] == package["ModelPackageArn"]
    with urllib.request.urlopen(f"{state['url']}/ping", timeout=5) as response:
        assert response.status == 200


def test_scored_table_is_queryable(finished_run):
    _, ws = finished_run
    rows = run_query(ws, "SELECT decision, count(*) AS n FROM scored GROUP BY 1").to_pylist()
    assert sum(r["n"] for r in rows) > 0
    assert {r["decision"] for r in rows} <= {"alert", "clear"}


def test_bad_rows_were_quarantined_with_reasons(finished_run):
    _, ws = finished_run
    reasons = run_query(ws, "SELECT reason, count(*) AS n FROM quarantine GROUP BY 1").to_pylist()
    assert reasons and all(r["reason"] for r in reasons)


def test_no_card_number_in_clear_after_ingestion(finished_run):
    """Every card number that landed is searched for in every file written after it."""
    import pyarrow.csv as pv

    _, ws = finished_run
    landing = ws.landing.resolve()
    cards: set[bytes] = set()
    for drop in ws.landing.glob("*.csv"):
        options = pv.ConvertOptions(column_types={"card_number": "string"})
        column = pv.read_csv(drop, convert_options=options).column("card_number")
        cards.update(c.encode() for c in column.to_pylist() if c and len(c) >= 13)
    assert len(cards) > 100
    pattern = re.compile(b"|".join(re.escape(c) for c in sorted(cards)))
    leaks = []
    for path in ws.root.rglob("*"):
        if path.is_file() and landing not in path.resolve().parents:
            match = pattern.search(path.read_bytes())
            if match:
                leaks.append(f"{path}: {match.group()[:6].decode()}...")
    assert not leaks, leaks[:5]


def test_quality_gate_rejects_a_model_below_the_bar(finished_run):
    """Same data and code (steps reused from the cache), a bar the model cannot meet."""
    from pipelines.fraud.local_run import run_pipeline_locally

    _, ws = finished_run
    registry = LocalModelRegistry(ws.registry_db)
    before = registry.list_model_packages("fraud-detection")["ModelPackageSummaryList"]
    run = run_pipeline_locally(ws, {"QualityThresholdAP": 0.999}, progress=False)
    assert not run.succeeded
    execution = run.execution
    assert execution.status == "Failed"
    assert "average precision" in execution.failure_reason
    assert "0.999" in execution.failure_reason
    assert execution.step("Train").cache_hit
    after = registry.list_model_packages("fraud-detection")["ModelPackageSummaryList"]
    assert after == before, "a rejected model is never registered"
