"""Four-eyes on authenticated identity: the OS account decides, typed names are only labels.

Each trick someone once used to approve their own model is tried against the
CLI as the account that created the package, and must be refused and audited.
"""

from __future__ import annotations

import os
import pwd
import sqlite3

import pytest

from pipelines.analytics.reports.model_card import _approvals_section
from pipelines.cli.main import main
from pipelines.compliance.audit import list_entries
from pipelines.core.identity import (
    USER_ENV,
    Actor,
    clean_display_name,
    current_actor,
    current_user,
    identity_key,
    same_identity,
)
from pipelines.model.registry import (
    APPROVED,
    DEMO,
    FOUR_EYES,
    PENDING,
    REJECTED,
    FourEyesError,
    LocalModelRegistry,
)
from pipelines.model.registry.principals import same_principal, self_approval
from pipelines.serving.deploy.sample_model import create_request

GROUP = "fraud-detection"
MODEL_URL = "s3://artifacts/models/run-1/model.tar.gz"
CYRILLIC_A = "\u0430"  # looks like Latin "a"
ZERO_WIDTH_SPACE = "\u200b"


# --- the resolver ------------------------------------------------------------------------


def test_the_acting_identity_is_the_os_account_not_the_environment(monkeypatch):
    account = pwd.getpwuid(os.getuid()).pw_name
    for variable in ("USER", "LOGNAME", "USERNAME", "LNAME"):
        monkeypatch.setenv(variable, "mallory")
    monkeypatch.setenv(USER_ENV, "alice")
    assert current_user() == account
    actor = current_actor()
    assert (actor.account, actor.display) == (account, "alice")  # beside, never instead
    assert current_actor("Bob B.").display == "Bob B."  # --approver wins over the variable
    monkeypatch.delenv(USER_ENV)
    assert current_actor().display is None


def test_display_names_are_cleaned_and_labelled_after_the_account():
    assert clean_display_name(f"  Bob{ZERO_WIDTH_SPACE}\n\tB.  ") == "Bob B."
    assert clean_display_name(ZERO_WIDTH_SPACE) is None
    assert len(clean_display_name("x" * 500)) == 64
    assert Actor("bob", "Bob B.").label == 'bob ("Bob B.")'
    assert Actor("bob", "BOB").label == "bob"  # a display that only repeats the account


@pytest.mark.parametrize(
    "look_alike",
    [
        "ALICE",  # case
        " Alice ",  # surrounding blanks
        f"al{ZERO_WIDTH_SPACE}ice",  # zero-width space
        "al\u200dice\ufeff",  # zero-width joiner, BOM
        "al\u00adice",  # soft hyphen
        f"{CYRILLIC_A}lice",  # Cyrillic a
        "\u0430l\u0456\u0441\u0435",  # Cyrillic a, i, c, e
        "\u0391LICE",  # Greek capital alpha
        "\uff41\uff4c\uff49\uff43\uff45",  # full-width letters (NFKC)
        "ali\u0301ce",  # combining accent
        "al1ce",  # digit one for i
    ],
)
def test_look_alikes_of_a_name_are_the_same_identity(look_alike):
    assert same_identity(look_alike, "alice")
    assert same_identity("alice", look_alike)


def test_different_names_stay_different():
    assert not same_identity("alice", "bob")
    assert not same_identity("alice", "alicia")
    assert not same_identity("", "")  # an empty name matches nothing
    assert identity_key(ZERO_WIDTH_SPACE) == ""


# --- the registry ------------------------------------------------------------------------


@pytest.fixture
def registry(workspace) -> LocalModelRegistry:
    return LocalModelRegistry.for_workspace(workspace)


def register(registry: LocalModelRegistry, os_account, created_by: str, by: str) -> str:
    """A package whose run ``created_by`` started, registered by the process of account ``by``."""
    os_account(by)
    return registry.create_model_package(create_request(GROUP, MODEL_URL), created_by)[
        "ModelPackageArn"
    ]


def refusals(workspace) -> list[dict]:
    return list_entries(workspace, action="model.approve.refused") + list_entries(
        workspace, action="model.reject.refused"
    )


TRICKS = {
    # name: (the run's starter recorded on the package, the CLI arguments, the environment)
    "--approver bob": ("alice", ["--approver", "bob"], {}),
    "FRAUDOPS_USER=bob": ("alice", [], {USER_ENV: "bob"}),
    "both": ("alice", ["--approver", "carol"], {USER_ENV: "bob"}),
    "cyrillic look-alike": (f"{CYRILLIC_A}lice", [], {}),
    "zero-width space": (f"ali{ZERO_WIDTH_SPACE}ce", [], {}),
    "case change": ("ALICE", [], {}),
}


@pytest.mark.parametrize("trick", TRICKS)
def test_every_identity_trick_is_refused_for_the_creator_and_audited(
    trick, registry, workspace, os_account, monkeypatch, capsys
):
    created_by, arguments, environment = TRICKS[trick]
    arn = register(registry, os_account, created_by, by="ci-runner")
    os_account("alice")  # the trainer's own OS account runs the approval
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    workdir = ["--workdir", str(workspace.root)]
    code = main(["model", "approve", "1", "--reason", "looks good", *arguments, *workdir])

    assert code == 2
    error = capsys.readouterr().err
    assert "four-eyes" in error and "different person" in error
    # The refusal does not teach a way around it.
    for hint in ("--approver", USER_ENV, "display", "set ", "normalis"):
        assert hint not in error
    assert registry.describe_model_package(arn)["ModelApprovalStatus"] == PENDING
    assert registry.list_decisions(arn) == []
    (refused,) = refusals(workspace)
    assert refused["actor"] == "alice" and refused["subject"] == arn
    assert refused["details"]["to"] == APPROVED
    typed = arguments[1:] or list(environment.values())
    assert refused["details"].get("display_name") == (typed[0] if typed else None)


@pytest.mark.parametrize(
    "account", ["ALICE", f"{CYRILLIC_A}lice", f"al{ZERO_WIDTH_SPACE}ice", "Alice"]
)
def test_an_account_that_looks_like_the_creator_is_refused(
    account, registry, workspace, os_account
):
    arn = register(registry, os_account, "alice", by="ci-runner")
    with pytest.raises(FourEyesError):
        registry.update_model_package(arn, REJECTED, account, "no")
    assert [e["actor"] for e in refusals(workspace)] == [account]


def test_the_account_that_registered_a_resumed_run_cannot_approve_either(
    registry, workspace, os_account
):
    # alice started the run; bob's process resumed it and registered the package.
    arn = register(registry, os_account, "alice", by="bob")
    assert registry.describe_model_package(arn)["RegisteredBy"] == {"UserProfileName": "bob"}
    with pytest.raises(FourEyesError):
        registry.update_model_package(arn, REJECTED, "bob", "mine")
    registry.update_model_package(arn, REJECTED, "carol", "recall too low")
    assert registry.list_decisions(arn)[0]["Approver"] == "carol"
    (registered,) = list_entries(workspace, action="model.register")
    assert registered["actor"] == "alice" and registered["details"]["registered_by"] == "bob"


def test_a_second_account_decides_with_a_display_name_beside_it(
    registry, workspace, os_account, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    arn = register(registry, os_account, "alice", by="alice")
    os_account("bob")
    workdir = ["--workdir", str(workspace.root)]
    # Rejecting: the same four-eyes check as approving, and nothing to deploy.
    code = main(["model", "reject", "1", "--approver", "Bob B.", "--reason", "drift", *workdir])
    assert code == 0
    assert 'Rejected by bob ("Bob B.")' in capsys.readouterr().out
    (decision,) = registry.list_decisions(arn)
    assert (decision["Approver"], decision["ApproverDisplayName"]) == ("bob", "Bob B.")
    assert decision["Kind"] == FOUR_EYES
    (entry,) = list_entries(workspace, action="model.reject")
    assert entry["actor"] == "bob" and entry["details"]["display_name"] == "Bob B."
    assert main(["model", "show", "1", *workdir]) == 0
    shown = capsys.readouterr().out
    assert 'bob ("Bob B.")' in shown and "DEMO" not in shown


def test_registering_as_approved_is_refused_and_audited(registry, workspace, os_account):
    os_account("alice")
    request = create_request(GROUP, MODEL_URL)
    request["ModelApprovalStatus"] = APPROVED
    with pytest.raises(FourEyesError, match="PendingManualApproval"):
        registry.create_model_package(request, "alice")
    (refused,) = list_entries(workspace, action="model.register.refused")
    assert refused["actor"] == "alice" and refused["subject"] == GROUP


# --- the demo approval of `fraudops run` ---------------------------------------------------


def test_the_demo_approval_is_possible_and_shown_as_a_demo_everywhere(
    registry, workspace, os_account, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    arn = register(registry, os_account, "alice", by="alice")
    # No deployment here: the registry's own bus has the deploy rule, so use one without it.
    quiet = LocalModelRegistry(workspace.registry_db, audit=registry._audit)
    quiet.demo_approve(arn, "alice", "demo approval by fraudops run", "demo-approver")

    described = registry.describe_model_package(arn)
    assert described["ModelApprovalStatus"] == APPROVED and described["ApprovalKind"] == DEMO
    (decision,) = registry.list_decisions(arn)
    assert (decision["Approver"], decision["Kind"]) == ("alice", DEMO)
    assert decision["ApproverDisplayName"] == "demo-approver"
    (entry,) = list_entries(workspace, action="model.approve.demo")
    assert entry["actor"] == "alice" and entry["details"]["display_name"] == "demo-approver"
    assert list_entries(workspace, action="model.approve") == [entry]  # not a plain approval

    assert main(["model", "show", "1", "--workdir", str(workspace.root)]) == 0
    shown = capsys.readouterr().out
    assert "DEMO approval" in shown and "not reviewed by a second person" in shown
    assert "DEMO" in shown.split("decisions", 1)[1]

    section = _approvals_section(
        {"approvals": registry.list_decisions(arn), "model_package": {"created_by": "alice"}}
    )
    assert any("DEMO approval" in note and "four-eyes" in note for note in section.paragraphs)
    (table,) = section.tables
    assert table.rows == [[decision["DecidedAt"], "alice", "demo-approver", DEMO, PENDING,
                           APPROVED, "demo approval by fraudops run"]]  # fmt: skip


def test_a_reviewed_approval_carries_no_demo_notice(registry, workspace, os_account):
    arn = register(registry, os_account, "alice", by="alice")
    LocalModelRegistry(workspace.registry_db).update_model_package(arn, REJECTED, "bob", "no")
    section = _approvals_section(
        {"approvals": registry.list_decisions(arn), "model_package": {"created_by": "alice"}}
    )
    assert section.paragraphs == []
    assert section.tables[0].rows[0][1:4] == ["bob", "", FOUR_EYES]


def test_a_registry_written_before_identities_were_recorded_still_opens(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE model_package_groups (name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE,
                description TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL,
                created_at TEXT NOT NULL);
            CREATE TABLE model_packages (arn TEXT PRIMARY KEY, group_name TEXT NOT NULL,
                version INTEGER NOT NULL, approval_status TEXT NOT NULL,
                created_by TEXT NOT NULL, created_at TEXT NOT NULL, last_modified_by TEXT,
                last_modified_at TEXT, approval_description TEXT, request_json TEXT NOT NULL,
                UNIQUE (group_name, version));
            CREATE TABLE approval_decisions (id INTEGER PRIMARY KEY AUTOINCREMENT,
                model_package_arn TEXT NOT NULL, from_status TEXT NOT NULL,
                to_status TEXT NOT NULL, approver TEXT NOT NULL, reason TEXT NOT NULL,
                decided_at TEXT NOT NULL);
            """
        )
    registry = LocalModelRegistry(path)
    arn = registry.create_model_package(create_request(GROUP, MODEL_URL), "alice")[
        "ModelPackageArn"
    ]
    registry.update_model_package(arn, REJECTED, "zed", "old workspace, new code")
    assert registry.list_decisions(arn)[0]["Kind"] == FOUR_EYES
    assert LocalModelRegistry(path).describe_model_package(arn)["ApprovalKind"] == FOUR_EYES


# --- SageMaker identities ----------------------------------------------------------------

ALICE_ROLE = "arn:aws:sts::123456789012:assumed-role/ml-engineers/alice"


@pytest.mark.parametrize(
    ("creator", "approver", "same"),
    [
        # Studio user profiles (the shared execution role does not make them one person)
        ({"UserProfileName": "alice", "DomainId": "d-1",
          "IamIdentity": {"Arn": "arn:aws:sts::1:assumed-role/studio/SageMaker"}},
         {"UserProfileName": "bob", "DomainId": "d-1",
          "IamIdentity": {"Arn": "arn:aws:sts::1:assumed-role/studio/SageMaker"}}, False),
        ({"UserProfileName": "alice", "DomainId": "d-1"},
         {"UserProfileName": f"{CYRILLIC_A}lice", "DomainId": "d-1"}, True),
        ({"UserProfileArn": "arn:aws:sagemaker:eu-west-1:1:user-profile/d-1/alice"},
         {"UserProfileName": "ALICE", "DomainId": "d-1"}, True),
        # IAM identities: same role session, differently spelt; same principal id
        ({"IamIdentity": {"Arn": ALICE_ROLE}},
         {"IamIdentity": {"Arn": "arn:aws:sts::123456789012:assumed-role/ML-Engineers/Alice"}},
         True),
        ({"IamIdentity": {"Arn": ALICE_ROLE, "PrincipalId": "AROAX:alice"}},
         {"IamIdentity": {"Arn": "arn:aws:iam::123456789012:user/x", "PrincipalId":
                          f"AROAX:al{ZERO_WIDTH_SPACE}ice"}}, True),
        ({"IamIdentity": {"Arn": "arn:aws:iam::123456789012:role/team/ml-engineers"}},
         {"IamIdentity": {"Arn": ALICE_ROLE}}, True),  # the role itself: every session
        ({"IamIdentity": {"Arn": ALICE_ROLE}},
         {"IamIdentity": {"Arn": "arn:aws:sts::123456789012:assumed-role/ml-engineers/bob"}},
         False),
        # The identity provider's source identity outranks differing sessions
        ({"IamIdentity": {"Arn": ALICE_ROLE, "SourceIdentity": "alice@example.com"}},
         {"IamIdentity": {"Arn": "arn:aws:sts::123456789012:assumed-role/ml/other",
                          "SourceIdentity": "Alice@Example.com"}}, True),
        # Nothing comparable
        ({"UserProfileName": "alice"}, {"IamIdentity": {"Arn": ALICE_ROLE}}, None),
        ({}, {"UserProfileName": "bob"}, None),
    ],
)  # fmt: skip
def test_sagemaker_principals_compare_on_their_normalised_identities(creator, approver, same):
    assert same_principal(creator, approver) is same


def test_self_approval_reads_the_event_identity_too_and_fails_closed():
    arn = "arn:aws:sagemaker:eu-west-1:1:model-package/g/1"
    alice, bob = {"UserProfileName": "alice"}, {"UserProfileName": "bob"}
    package = {"ModelPackageArn": arn, "CreatedBy": alice, "LastModifiedBy": bob}
    assert self_approval(package) is None
    event = {"detail": {"LastModifiedBy": {"UserProfileName": "Alice"}}}
    assert "approved by the principal that created it" in self_approval(package, event)
    assert "no approver identity" in self_approval({"ModelPackageArn": arn, "CreatedBy": alice})
    unknown = {**package, "LastModifiedBy": {"IamIdentity": {"Arn": ALICE_ROLE}}}
    assert "cannot be established" in self_approval(unknown)


def test_a_card_number_typed_as_display_name_or_reason_is_never_stored(registry, workspace):
    arn = registry.create_model_package(create_request(GROUP, MODEL_URL), "alice")[
        "ModelPackageArn"
    ]
    card = "4111 1111 1111 1111"
    quiet = LocalModelRegistry(workspace.registry_db, audit=registry._audit)
    quiet.update_model_package(arn, REJECTED, "bob", f"see {card}", display_name=card)
    (decision,) = registry.list_decisions(arn)
    stored = f"{decision['Reason']} {decision['ApproverDisplayName']}"
    assert "1111 1111" not in stored and "4111111111111111" not in stored
    written = workspace.registry_db.read_bytes().decode("latin-1")
    assert card not in written and "4111111111111111" not in written
