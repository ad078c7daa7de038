"""Model registry: SageMaker model-package shapes, four-eyes approvals, audit trail."""

from __future__ import annotations

import threading

import pytest

from pipelines.cli.main import main
from pipelines.core.events import MODEL_PACKAGE_STATE_CHANGE, EventBus, matches
from pipelines.model.registry import (
    APPROVED,
    PENDING,
    REJECTED,
    FourEyesError,
    LocalModelRegistry,
    NotFoundError,
    RegistryError,
)
from pipelines.serving.deploy.sample_model import SAMPLE_PARAMETERS, create_request

GROUP = "fraud-detection"
MODEL_URL = "s3://artifacts/models/run-1/model.tar.gz"


@pytest.fixture
def events() -> list[dict]:
    return []


@pytest.fixture
def registry(tmp_path, events) -> LocalModelRegistry:
    bus = EventBus()
    bus.put_rule(
        "record",
        {"source": ["aws.sagemaker"], "detail-type": [MODEL_PACKAGE_STATE_CHANGE]},
        lambda event, context: events.append(event),
    )
    return LocalModelRegistry(tmp_path / "registry.sqlite", bus=bus)


def register(registry: LocalModelRegistry, created_by: str = "pipeline-runner") -> str:
    return registry.create_model_package(create_request(GROUP, MODEL_URL), created_by)[
        "ModelPackageArn"
    ]


def test_versions_count_up_per_group_with_sagemaker_arns(registry):
    first, second = register(registry), register(registry)
    other = registry.create_model_package(create_request("other", MODEL_URL), "ann")
    assert first == "arn:aws:sagemaker:local:000000000000:model-package/fraud-detection/1"
    assert second.endswith("/fraud-detection/2")
    assert other["ModelPackageArn"].endswith("/other/1")


def test_describe_returns_the_request_and_pending_status(registry):
    arn = register(registry, created_by="alice")
    described = registry.describe_model_package(arn)
    assert described["ModelPackageArn"] == arn
    assert described["ModelPackageGroupName"] == GROUP
    assert described["ModelPackageVersion"] == 1
    assert described["ModelApprovalStatus"] == PENDING
    assert described["ModelPackageStatus"] == "Completed"
    assert described["CreatedBy"] == {"UserProfileName": "alice"}
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == MODEL_URL
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert described["CustomerMetadataProperties"] == SAMPLE_PARAMETERS.as_metadata()


def test_list_filters_by_status_newest_first(registry):
    first, second = register(registry), register(registry)
    registry.update_model_package(first, APPROVED, "bob", "AP above threshold")
    summaries = registry.list_model_packages(GROUP)["ModelPackageSummaryList"]
    assert [s["ModelPackageArn"] for s in summaries] == [second, first]
    approved = registry.list_model_packages(GROUP, approval_status=APPROVED)
    assert [s["ModelPackageArn"] for s in approved["ModelPackageSummaryList"]] == [first]


def test_concurrent_registrations_get_distinct_versions(registry):
    arns: list[str] = []
    threads = [threading.Thread(target=lambda: arns.append(register(registry))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(a.rsplit("/", 1)[1]) for a in arns) == list(range(1, 9))


def test_the_creator_cannot_approve_their_own_model(registry, events):
    arn = register(registry, created_by="alice")
    with pytest.raises(FourEyesError, match="different person"):
        registry.update_model_package(arn, APPROVED, " Alice ", "looks good")
    assert registry.describe_model_package(arn)["ModelApprovalStatus"] == PENDING
    assert registry.list_decisions(arn) == []
    assert events == []


def test_registering_as_approved_is_refused_under_four_eyes(registry):
    request = create_request(GROUP, MODEL_URL)
    request["ModelApprovalStatus"] = APPROVED
    with pytest.raises(FourEyesError, match="PendingManualApproval"):
        registry.create_model_package(request, "alice")


def test_every_decision_is_kept_and_emits_a_state_change_event(registry, events):
    arn = register(registry, created_by="alice")
    registry.update_model_package(arn, APPROVED, "bob", "AP 0.81 >= 0.7")
    registry.update_model_package(arn, REJECTED, "carol", "retired: drift on new merchants")
    decisions = registry.list_decisions(arn)
    assert [(d["FromStatus"], d["ToStatus"], d["Approver"], d["Reason"]) for d in decisions] == [
        (PENDING, APPROVED, "bob", "AP 0.81 >= 0.7"),
        (APPROVED, REJECTED, "carol", "retired: drift on new merchants"),
    ]
    assert all(d["DecidedAt"].endswith("Z") for d in decisions)
    described = registry.describe_model_package(arn)
    assert described["LastModifiedBy"] == {"UserProfileName": "carol"}
    assert described["ApprovalDescription"] == "retired: drift on new merchants"
    assert [e["detail"]["ModelApprovalStatus"] for e in events] == [APPROVED, REJECTED]
    assert events[0]["source"] == "aws.sagemaker"
    assert events[0]["detail-type"] == MODEL_PACKAGE_STATE_CHANGE
    assert events[0]["resources"] == [arn]
    assert events[0]["detail"]["ModelPackageArn"] == arn


@pytest.mark.parametrize(
    ("first", "second"),
    [(REJECTED, APPROVED), (REJECTED, REJECTED), (APPROVED, APPROVED)],
)
def test_invalid_transitions_are_refused(registry, first, second):
    arn = register(registry)
    registry.update_model_package(arn, first, "bob", "first decision")
    with pytest.raises(RegistryError, match=f"is {first}; it cannot become {second}"):
        registry.update_model_package(arn, second, "bob", "second decision")
    assert len(registry.list_decisions(arn)) == 1


def test_decisions_need_an_approver_and_a_reason(registry):
    arn = register(registry)
    with pytest.raises(RegistryError, match="reason is required"):
        registry.update_model_package(arn, APPROVED, "bob", "  ")
    with pytest.raises(RegistryError, match="approver account is required"):
        registry.update_model_package(arn, APPROVED, "", "ok")


def test_requests_without_artifact_are_refused(registry):
    request = create_request(GROUP, MODEL_URL)
    del request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    with pytest.raises(RegistryError, match=r"Containers\[0\] has no ModelDataUrl"):
        registry.create_model_package(request, "alice")


def test_unknown_package_is_a_clear_error(registry):
    with pytest.raises(NotFoundError, match="does not exist"):
        registry.describe_model_package("arn:aws:sagemaker:local:000000000000:model-package/x/9")


def test_a_failing_subscriber_does_not_undo_the_decision(tmp_path):
    bus = EventBus()

    def explode(event, context):
        raise RuntimeError("deployer down")

    bus.put_rule("deploy", {"detail-type": [MODEL_PACKAGE_STATE_CHANGE]}, explode)
    registry = LocalModelRegistry(tmp_path / "r.sqlite", bus=bus)
    arn = register(registry)
    result = registry.update_model_package(arn, APPROVED, "bob", "ok")
    assert result["Deliveries"][0].error == "RuntimeError: deployer down"
    assert registry.describe_model_package(arn)["ModelApprovalStatus"] == APPROVED


def test_event_patterns_match_like_eventbridge():
    event = {"source": "aws.sagemaker", "detail": {"ModelApprovalStatus": "Rejected"}}
    assert matches({"detail": {"ModelApprovalStatus": ["Approved", "Rejected"]}}, event)
    assert not matches({"detail": {"ModelApprovalStatus": ["Approved"]}}, event)
    assert not matches({"detail-type": ["x"]}, event)


def test_cli_lists_shows_and_decides(workspace, capsys, monkeypatch, os_account):
    # No deploy in this test: the rejection path never starts an endpoint.
    registry = LocalModelRegistry(workspace.registry_db)
    os_account("alice")
    arn = register(registry, created_by="alice")
    workdir = ["--workdir", str(workspace.root)]
    monkeypatch.setenv("COLUMNS", "250")

    assert main(["model", "list", *workdir]) == 0
    assert "PendingManualApproval" in capsys.readouterr().out

    assert main(["model", "reject", "1", "--reason", "mine", *workdir]) == 2
    assert "four-eyes" in capsys.readouterr().err

    os_account("bob")  # the OS account decides; a typed name is only a display name
    code = main(["model", "reject", "1", "--reason", "bad recall", *workdir])
    assert code == 0
    assert "never deployed" in capsys.readouterr().out

    assert main(["model", "show", "1", *workdir]) == 0
    shown = capsys.readouterr().out
    assert "Rejected" in shown and "bad recall" in shown and "bob" in shown
    assert registry.describe_model_package(arn)["ModelApprovalStatus"] == REJECTED

    assert main(["model", "show", "7", *workdir]) == 2
    assert "does not exist" in capsys.readouterr().err
