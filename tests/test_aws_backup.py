"""AWS records protection: moto where it implements the calls, Stubber for the rest."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from pipelines.compliance import aws_backup
from pipelines.compliance.aws_backup import BackupSettings, ProtectionError

ACCOUNT = "123456789012"
HOME, COPY = "us-east-1", "us-west-2"
KEY = f"arn:aws:kms:{HOME}:{ACCOUNT}:key/home"
COPY_KEY = f"arn:aws:kms:{COPY}:{ACCOUNT}:key/copy"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fraudops-dev-backup"
SETTINGS = BackupSettings(
    kms_key_arn=KEY, copy_kms_key_arn=COPY_KEY, iam_role_arn=ROLE, copy_region=COPY
)
VAULT_ARN = f"arn:aws:backup:{HOME}:{ACCOUNT}:backup-vault:fraudops-dev"
COPY_VAULT_ARN = f"arn:aws:backup:{COPY}:{ACCOUNT}:backup-vault:fraudops-dev"


# --- S3 under moto ---------------------------------------------------------------------


@mock_aws
def test_records_bucket_gets_compliance_object_lock_and_data_buckets_versioning():
    s3 = boto3.client("s3", region_name=HOME)
    s3.create_bucket(Bucket="fraudops-dev-lake")  # exists already, unversioned

    changes = aws_backup.set_up_storage(
        s3, "fraudops-dev-records", ["fraudops-dev-lake", "fraudops-dev-artifacts"], HOME
    )

    assert all(changes.values())
    lock = s3.get_object_lock_configuration(Bucket="fraudops-dev-records")
    assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    retention = lock["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Years"], retention.get("Days", 0)) == ("COMPLIANCE", 5, 0)
    for bucket in ("fraudops-dev-records", "fraudops-dev-lake", "fraudops-dev-artifacts"):
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        tags = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
        assert {"Key": "backup-plan", "Value": "fraudops"} in tags


@mock_aws
def test_object_lock_refuses_deleting_a_record_version_early():
    s3 = boto3.client("s3", region_name=HOME)
    aws_backup.ensure_records_bucket(s3, "records", HOME)
    put = s3.put_object(Bucket="records", Key="reports/sar.html", Body=b"<html/>")
    head = s3.head_object(Bucket="records", Key="reports/sar.html")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket="records", Key="reports/sar.html", VersionId=put["VersionId"])


@mock_aws
def test_storage_set_up_is_idempotent_and_keeps_other_tags():
    s3 = boto3.client("s3", region_name=HOME)
    s3.create_bucket(Bucket="lake")
    s3.put_bucket_tagging(Bucket="lake", Tagging={"TagSet": [{"Key": "owner", "Value": "risk"}]})
    aws_backup.set_up_storage(s3, "records", ["lake"], HOME)
    second = aws_backup.set_up_storage(s3, "records", ["lake"], HOME)
    assert second == {"records": False, "lake": False}
    tags = s3.get_bucket_tagging(Bucket="lake")["TagSet"]
    assert sorted(t["Key"] for t in tags) == ["backup-plan", "owner"]


@mock_aws
def test_records_bucket_in_another_region_is_created_there():
    s3 = boto3.client("s3", region_name="eu-west-1")
    aws_backup.ensure_records_bucket(s3, "records-eu", "eu-west-1")
    assert s3.get_bucket_location(Bucket="records-eu")["LocationConstraint"] == "eu-west-1"


# --- AWS Backup under moto (vault, lock, plan) --------------------------------------------


@mock_aws
def test_vault_lock_and_plan_under_moto_are_idempotent():
    backup = boto3.client("backup", region_name=HOME)
    state = aws_backup.ensure_backup_vault(backup, "fraudops-dev", KEY, {"project": "fraudops"})
    assert aws_backup.ensure_vault_lock(backup, "fraudops-dev", 35, 3650, 3, state=state)
    described = backup.describe_backup_vault(BackupVaultName="fraudops-dev")
    assert described["Locked"] is True
    assert (described["MinRetentionDays"], described["MaxRetentionDays"]) == (35, 3650)
    assert described["EncryptionKeyArn"] == KEY
    again = aws_backup.ensure_backup_vault(backup, "fraudops-dev", KEY, {})
    assert not aws_backup.ensure_vault_lock(backup, "fraudops-dev", 35, 3650, 3, state=again)

    document = aws_backup.backup_plan_document(SETTINGS, COPY_VAULT_ARN)
    plan_id = aws_backup.ensure_backup_plan(backup, document, SETTINGS.tags)
    assert aws_backup.ensure_backup_plan(backup, document, SETTINGS.tags) == plan_id
    assert len(backup.list_backup_plans()["BackupPlansList"]) == 1
    rule = backup.get_backup_plan(BackupPlanId=plan_id)["BackupPlan"]["Rules"][0]
    assert rule["ScheduleExpression"] == "cron(0 5 ? * * *)"
    assert rule["Lifecycle"] == {"DeleteAfterDays": 1827}
    assert rule["CopyActions"][0]["DestinationBackupVaultArn"] == COPY_VAULT_ARN


def test_vault_lock_parameters_are_validated_before_any_call():
    backup = boto3.client("backup", region_name=HOME)
    with Stubber(backup):  # no responses queued: any AWS call would fail the test
        with pytest.raises(ProtectionError, match="ChangeableForDays must be >= 3"):
            aws_backup.ensure_vault_lock(backup, "v", 35, 3650, changeable_for_days=1)
        with pytest.raises(ProtectionError, match="MinRetentionDays"):
            aws_backup.ensure_vault_lock(backup, "v", 400, 35)


# --- the whole sequence with Stubber (selection and restore testing are not in moto) ------


def _not_found(stub: Stubber, method: str) -> None:
    stub.add_client_error(method, "ResourceNotFoundException", http_status_code=404)


def _stub_new_vault(stub: Stubber, key: str, arn: str) -> None:
    _not_found(stub, "describe_backup_vault")
    stub.add_response(
        "create_backup_vault",
        {"BackupVaultName": "fraudops-dev", "BackupVaultArn": arn},
        {
            "BackupVaultName": "fraudops-dev",
            "EncryptionKeyArn": key,
            "BackupVaultTags": {"project": "fraudops", "environment": "dev"},
        },
    )
    stub.add_response(
        "put_backup_vault_lock_configuration",
        {},
        {
            "BackupVaultName": "fraudops-dev",
            "MinRetentionDays": 35,
            "MaxRetentionDays": 3650,
            "ChangeableForDays": 3,
        },
    )


def test_first_set_up_makes_exactly_the_expected_calls():
    home = boto3.client("backup", region_name=HOME)
    copy = boto3.client("backup", region_name=COPY)
    with Stubber(home) as home_stub, Stubber(copy) as copy_stub:
        _stub_new_vault(copy_stub, COPY_KEY, COPY_VAULT_ARN)
        _stub_new_vault(home_stub, KEY, VAULT_ARN)
        home_stub.add_response("list_backup_plans", {"BackupPlansList": []}, {})
        home_stub.add_response(
            "create_backup_plan",
            {"BackupPlanId": "plan-1"},
            {
                "BackupPlan": aws_backup.backup_plan_document(SETTINGS, COPY_VAULT_ARN),
                "BackupPlanTags": {"project": "fraudops", "environment": "dev"},
            },
        )
        home_stub.add_response(
            "list_backup_selections", {"BackupSelectionsList": []}, {"BackupPlanId": "plan-1"}
        )
        home_stub.add_response(
            "create_backup_selection",
            {"SelectionId": "sel-1"},
            {
                "BackupPlanId": "plan-1",
                "BackupSelection": {
                    "SelectionName": "tagged-resources",
                    "IamRoleArn": ROLE,
                    "ListOfTags": [
                        {
                            "ConditionType": "STRINGEQUALS",
                            "ConditionKey": "backup-plan",
                            "ConditionValue": "fraudops",
                        }
                    ],
                },
            },
        )
        home_stub.add_response("list_restore_testing_plans", {"RestoreTestingPlans": []}, {})
        home_stub.add_response(
            "create_restore_testing_plan",
            {
                "CreationTime": "2026-01-01T00:00:00Z",
                "RestoreTestingPlanArn": "arn:rtp",
                "RestoreTestingPlanName": "fraudops_dev_restore_test",
            },
            {
                "RestoreTestingPlan": {
                    "RestoreTestingPlanName": "fraudops_dev_restore_test",
                    "ScheduleExpression": "cron(0 8 ? * SAT *)",
                    "StartWindowHours": 24,
                    "RecoveryPointSelection": {
                        "Algorithm": "LATEST_WITHIN_WINDOW",
                        "IncludeVaults": [VAULT_ARN],
                        "RecoveryPointTypes": ["SNAPSHOT"],
                        "SelectionWindowDays": 7,
                    },
                }
            },
        )
        home_stub.add_response(
            "list_restore_testing_selections",
            {"RestoreTestingSelections": []},
            {"RestoreTestingPlanName": "fraudops_dev_restore_test"},
        )
        home_stub.add_response(
            "create_restore_testing_selection",
            {
                "CreationTime": "2026-01-01T00:00:00Z",
                "RestoreTestingPlanArn": "arn:rtp",
                "RestoreTestingPlanName": "fraudops_dev_restore_test",
                "RestoreTestingSelectionName": "lake_buckets",
            },
            {
                "RestoreTestingPlanName": "fraudops_dev_restore_test",
                "RestoreTestingSelection": {
                    "RestoreTestingSelectionName": "lake_buckets",
                    "ProtectedResourceType": "S3",
                    "IamRoleArn": ROLE,
                    "ProtectedResourceConditions": {
                        "StringEquals": [
                            {"Key": "aws:ResourceTag/backup-plan", "Value": "fraudops"}
                        ]
                    },
                    "ValidationWindowHours": 24,
                },
            },
        )

        result = aws_backup.set_up_backup(home, copy, SETTINGS)

        home_stub.assert_no_pending_responses()
        copy_stub.assert_no_pending_responses()
    assert result == {
        "vault_arn": VAULT_ARN,
        "copy_vault_arn": COPY_VAULT_ARN,
        "plan_id": "plan-1",
        "selection_id": "sel-1",
    }


def _stub_existing_vault(stub: Stubber, arn: str, min_days: int = 35) -> None:
    stub.add_response(
        "describe_backup_vault",
        {
            "BackupVaultName": "fraudops-dev",
            "BackupVaultArn": arn,
            "Locked": True,
            "MinRetentionDays": min_days,
            "MaxRetentionDays": 3650,
        },
        {"BackupVaultName": "fraudops-dev"},
    )


def _stub_existing_plan(stub: Stubber, rules: list[dict]) -> None:
    stub.add_response(
        "list_backup_plans",
        {"BackupPlansList": [{"BackupPlanId": "plan-1", "BackupPlanName": "fraudops-dev-daily"}]},
        {},
    )
    stub.add_response(
        "get_backup_plan",
        {"BackupPlan": {"BackupPlanName": "fraudops-dev-daily", "Rules": rules}},
        {"BackupPlanId": "plan-1"},
    )


def _stub_existing_rest(stub: Stubber) -> None:
    stub.add_response(
        "list_backup_selections",
        {"BackupSelectionsList": [{"SelectionId": "sel-1", "SelectionName": "tagged-resources"}]},
        {"BackupPlanId": "plan-1"},
    )
    stub.add_response(
        "list_restore_testing_plans",
        {
            "RestoreTestingPlans": [
                {
                    "CreationTime": "2026-01-01T00:00:00Z",
                    "RestoreTestingPlanArn": "arn:rtp",
                    "RestoreTestingPlanName": "fraudops_dev_restore_test",
                    "ScheduleExpression": "cron(0 8 ? * SAT *)",
                }
            ]
        },
        {},
    )
    stub.add_response(
        "list_restore_testing_selections",
        {
            "RestoreTestingSelections": [
                {
                    "CreationTime": "2026-01-01T00:00:00Z",
                    "IamRoleArn": ROLE,
                    "ProtectedResourceType": "S3",
                    "RestoreTestingPlanName": "fraudops_dev_restore_test",
                    "RestoreTestingSelectionName": "lake_buckets",
                }
            ]
        },
        {"RestoreTestingPlanName": "fraudops_dev_restore_test"},
    )


def _current_rules() -> list[dict]:
    """What AWS returns for our plan: our fields plus ids it adds."""
    rules = aws_backup.backup_plan_document(SETTINGS, COPY_VAULT_ARN)["Rules"]
    return [dict(rule, RuleId="rule-1") for rule in rules]


def test_second_set_up_only_describes():
    home = boto3.client("backup", region_name=HOME)
    copy = boto3.client("backup", region_name=COPY)
    with Stubber(home) as home_stub, Stubber(copy) as copy_stub:
        _stub_existing_vault(copy_stub, COPY_VAULT_ARN)
        _stub_existing_vault(home_stub, VAULT_ARN)
        _stub_existing_plan(home_stub, _current_rules())
        _stub_existing_rest(home_stub)

        result = aws_backup.set_up_backup(home, copy, SETTINGS)

        home_stub.assert_no_pending_responses()
        copy_stub.assert_no_pending_responses()
    assert result["plan_id"] == "plan-1" and result["selection_id"] == "sel-1"


def test_a_drifted_plan_is_updated_in_place():
    home = boto3.client("backup", region_name=HOME)
    drifted = _current_rules()
    drifted[0]["Lifecycle"] = {"DeleteAfterDays": 30}  # someone shortened retention
    with Stubber(home) as stub:
        _stub_existing_plan(stub, drifted)
        stub.add_response(
            "update_backup_plan",
            {"BackupPlanId": "plan-1"},
            {
                "BackupPlanId": "plan-1",
                "BackupPlan": aws_backup.backup_plan_document(SETTINGS, COPY_VAULT_ARN),
            },
        )
        document = aws_backup.backup_plan_document(SETTINGS, COPY_VAULT_ARN)
        assert aws_backup.ensure_backup_plan(home, document, SETTINGS.tags) == "plan-1"
        stub.assert_no_pending_responses()


def test_a_locked_vault_past_its_grace_period_is_reported_not_retried():
    backup = boto3.client("backup", region_name=HOME)
    with Stubber(backup) as stub:
        _stub_existing_vault(stub, VAULT_ARN, min_days=7)
        stub.add_client_error(
            "put_backup_vault_lock_configuration",
            "InvalidRequestException",
            "Vault Lock configuration is immutable",
            expected_params={
                "BackupVaultName": "fraudops-dev",
                "MinRetentionDays": 35,
                "MaxRetentionDays": 3650,
                "ChangeableForDays": ANY,
            },
        )
        with pytest.raises(ProtectionError, match="cannot be changed"):
            aws_backup.ensure_vault_lock(backup, "fraudops-dev", 35, 3650)
        stub.assert_no_pending_responses()


# --- the landing bucket is never backed up -------------------------------------------------


@mock_aws
@pytest.mark.parametrize("landing", ["fraudops-dev-landing", "fraudops-prod-landing-123456789012"])
def test_a_landing_bucket_named_as_the_stack_names_it_is_refused_before_any_change(landing):
    s3 = boto3.client("s3", region_name=HOME)
    s3.create_bucket(Bucket=landing)
    with pytest.raises(ProtectionError, match=rf"refusing to back up s3://{landing}: its name"):
        aws_backup.set_up_storage(s3, "fraudops-dev-records", ["fraudops-dev-lake", landing], HOME)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [landing]  # nothing created
    assert "Status" not in s3.get_bucket_versioning(Bucket=landing)
    with pytest.raises(ClientError, match="NoSuchTagSet"):
        s3.get_bucket_tagging(Bucket=landing)


@mock_aws
def test_a_bucket_tagged_as_raw_cardholder_data_is_refused_whatever_its_name():
    s3 = boto3.client("s3", region_name=HOME)
    s3.create_bucket(Bucket="drops")
    s3.put_bucket_tagging(Bucket="drops", Tagging={"TagSet": [aws_backup.RAW_CARDHOLDER_TAG]})
    with pytest.raises(ProtectionError, match="drops: it is tagged data-classification="
                                              "raw-cardholder-data"):
        aws_backup.set_up_storage(s3, "records", ["drops"], HOME)
    assert s3.get_bucket_tagging(Bucket="drops")["TagSet"] == [aws_backup.RAW_CARDHOLDER_TAG]


def test_the_refused_tag_is_the_one_the_landing_bucket_carries():
    from test_infra import INFRA, _load

    landing = _load(INFRA / "storage.yaml")["Resources"]["LandingBucket"]["Properties"]
    assert aws_backup.RAW_CARDHOLDER_TAG in landing["Tags"]
    name = landing["BucketName"]["Fn::Sub"]
    assert aws_backup.landing_bucket_pattern("fraudops").match(
        name.replace("${ProjectName}", "fraudops").replace("${Environment}", "dev")
        .replace("${AWS::AccountId}", ACCOUNT))


@mock_aws
def test_the_command_line_refuses_the_landing_bucket(capsys):
    with pytest.raises(SystemExit) as exit_info:
        aws_backup.main(["--region", HOME, "--copy-region", COPY, "--kms-key-arn", KEY,
                         "--copy-kms-key-arn", COPY_KEY, "--role-arn", ROLE,
                         "--records-bucket", "fraudops-dev-records",
                         "--data-bucket", "fraudops-dev-landing-123456789012"])
    assert exit_info.value.code == 2
    assert "refusing to back up s3://fraudops-dev-landing-123456789012" in capsys.readouterr().err
