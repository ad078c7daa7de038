"""AWS records protection: AWS Backup (vault, lock, plan, selection, restore testing) and S3.

The AWS twin of the local vault (``pipelines.compliance.vault``):

* a backup vault per region encrypted with a KMS key, locked in compliance
  mode (``ChangeableForDays`` >= 3: after the grace period nobody, root
  included, can shorten retention or delete recovery points early);
* a daily backup plan: schedule expression, lifecycle delete after the
  retention period, and a copy of every recovery point to the vault in a
  second region;
* a selection of every resource tagged ``backup-plan=<project>``;
* a restore-testing plan and selection, so restores are proven weekly;
* S3 Object Lock in compliance mode (default retention five years) on the
  records bucket, created with ``ObjectLockEnabledForBucket``, and
  versioning plus the selection tag on every data bucket.

Every ``ensure_*`` function describes before it creates, so running the
set-up again changes nothing. Names match ``infra/backup.yaml`` so the
script and the CloudFormation stack describe the same resources.

    python -m pipelines.compliance.aws_backup --region us-east-1 --copy-region us-west-2 \\
        --kms-key-arn arn:aws:kms:... --copy-kms-key-arn arn:aws:kms:... \\
        --role-arn arn:aws:iam::...:role/fraudops-dev-backup \\
        --records-bucket fraudops-dev-records --data-bucket fraudops-dev-lake
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

# The one retention figure the local vault also applies (policy.py).
from pipelines.compliance.policy import BSA_RETENTION_DAYS

RECORDS_RETENTION_YEARS = 5
MIN_CHANGEABLE_FOR_DAYS = 3  # AWS's floor for the compliance-mode grace period
TAG_KEY = "backup-plan"
# The tag infra/storage.yaml puts on the landing bucket: raw drops may hold card
# numbers in clear, so a bucket carrying it must never be backed up (a recovery
# point in a compliance-locked vault could not be deleted for years).
RAW_CARDHOLDER_TAG = {"Key": "data-classification", "Value": "raw-cardholder-data"}


class ProtectionError(RuntimeError):
    """A resource exists in a state the set-up cannot (or must not) change."""


@dataclass(frozen=True)
class BackupSettings:
    """Everything the AWS Backup set-up needs; names follow infra/backup.yaml."""

    kms_key_arn: str
    copy_kms_key_arn: str
    iam_role_arn: str
    copy_region: str
    project: str = "fraudops"
    environment: str = "dev"
    retention_days: int = BSA_RETENTION_DAYS
    schedule_expression: str = "cron(0 5 ? * * *)"
    restore_test_schedule: str = "cron(0 8 ? * SAT *)"
    lock_min_retention_days: int = 35
    lock_max_retention_days: int = 3650
    lock_changeable_for_days: int = MIN_CHANGEABLE_FOR_DAYS

    @property
    def vault_name(self) -> str:
        return f"{self.project}-{self.environment}"

    @property
    def plan_name(self) -> str:
        return f"{self.project}-{self.environment}-daily"

    @property
    def restore_testing_plan_name(self) -> str:
        # Restore-testing names allow only letters, digits and underscores.
        return f"{self.project}_{self.environment}_restore_test"

    @property
    def tags(self) -> dict[str, str]:
        return {"project": self.project, "environment": self.environment}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _pages(call: Callable[..., dict], key: str, **params: Any) -> Iterator[dict]:
    """Every item of a NextToken-paginated list call."""
    token = None
    while True:
        response = call(**params, **({"NextToken": token} if token else {}))
        yield from response.get(key, [])
        token = response.get("NextToken")
        if not token:
            return


# --- vaults and the vault lock -----------------------------------------------------


def ensure_backup_vault(backup, name: str, kms_key_arn: str, tags: dict[str, str]) -> dict:
    """Describe the vault, creating it (KMS-encrypted, tagged) if absent; return its state."""
    try:
        return backup.describe_backup_vault(BackupVaultName=name)
    except ClientError as exc:
        if _error_code(exc) not in ("ResourceNotFoundException", "AccessDeniedException"):
            raise
    created = backup.create_backup_vault(
        BackupVaultName=name, EncryptionKeyArn=kms_key_arn, BackupVaultTags=tags
    )
    return {"BackupVaultName": name, "BackupVaultArn": created["BackupVaultArn"], "Locked": False}


def ensure_vault_lock(
    backup,
    name: str,
    min_retention_days: int,
    max_retention_days: int,
    changeable_for_days: int = MIN_CHANGEABLE_FOR_DAYS,
    state: dict | None = None,
) -> bool:
    """Lock the vault in compliance mode; True if a lock call was made.

    ``ChangeableForDays`` is what makes it compliance mode (AWS requires at
    least 3); without it the lock is governance mode and privileged users can
    remove it. ``state`` is a describe_backup_vault response already at hand.
    """
    if changeable_for_days < MIN_CHANGEABLE_FOR_DAYS:
        raise ProtectionError(
            f"ChangeableForDays must be >= {MIN_CHANGEABLE_FOR_DAYS} for a compliance-mode "
            f"lock, got {changeable_for_days}"
        )
    if not 1 <= min_retention_days <= max_retention_days:
        raise ProtectionError(
            f"vault lock needs 1 <= MinRetentionDays ({min_retention_days}) <= "
            f"MaxRetentionDays ({max_retention_days})"
        )
    state = state if state is not None else backup.describe_backup_vault(BackupVaultName=name)
    if (
        state.get("Locked")
        and state.get("MinRetentionDays") == min_retention_days
        and state.get("MaxRetentionDays") == max_retention_days
    ):
        return False
    try:
        backup.put_backup_vault_lock_configuration(
            BackupVaultName=name,
            MinRetentionDays=min_retention_days,
            MaxRetentionDays=max_retention_days,
            ChangeableForDays=changeable_for_days,
        )
    except ClientError as exc:
        if _error_code(exc) == "InvalidRequestException":
            raise ProtectionError(
                f"vault {name} is locked with Min/Max retention "
                f"{state.get('MinRetentionDays')}/{state.get('MaxRetentionDays')} days and its "
                "grace period is over; a compliance lock cannot be changed"
            ) from exc
        raise
    return True


# --- the backup plan and the tag selection ----------------------------------------------


def backup_plan_document(settings: BackupSettings, copy_vault_arn: str) -> dict:
    """The plan: one daily rule, delete after retention, copy to the second-region vault."""
    lifecycle = {"DeleteAfterDays": settings.retention_days}
    return {
        "BackupPlanName": settings.plan_name,
        "Rules": [
            {
                "RuleName": "daily",
                "TargetBackupVaultName": settings.vault_name,
                "ScheduleExpression": settings.schedule_expression,
                "StartWindowMinutes": 60,
                "CompletionWindowMinutes": 600,
                "Lifecycle": lifecycle,
                "CopyActions": [
                    {"DestinationBackupVaultArn": copy_vault_arn, "Lifecycle": lifecycle}
                ],
            }
        ],
    }


def _subset_differs(desired: Any, current: Any) -> bool:
    """True if any value in ``desired`` is absent or different in ``current`` (AWS adds ids)."""
    if isinstance(desired, dict):
        if not isinstance(current, dict):
            return True
        return any(_subset_differs(v, current.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(current, list) or len(desired) != len(current):
            return True
        return any(_subset_differs(d, c) for d, c in zip(desired, current, strict=True))
    return desired != current


def ensure_backup_plan(backup, document: dict, tags: dict[str, str]) -> str:
    """Create the plan, or update it if its rules drifted; return the plan id."""
    name = document["BackupPlanName"]
    existing = next(
        (
            p
            for p in _pages(backup.list_backup_plans, "BackupPlansList")
            if p.get("BackupPlanName") == name
        ),
        None,
    )
    if existing is None:
        created = backup.create_backup_plan(BackupPlan=document, BackupPlanTags=tags)
        return created["BackupPlanId"]
    plan_id = existing["BackupPlanId"]
    current = backup.get_backup_plan(BackupPlanId=plan_id)["BackupPlan"]
    if _subset_differs(document["Rules"], current.get("Rules")):
        backup.update_backup_plan(BackupPlanId=plan_id, BackupPlan=document)
    return plan_id


def ensure_tag_selection(
    backup, plan_id: str, name: str, iam_role_arn: str, tag_key: str, tag_value: str
) -> str:
    """Select every resource tagged ``tag_key=tag_value``; return the selection id."""
    for selection in _pages(
        backup.list_backup_selections, "BackupSelectionsList", BackupPlanId=plan_id
    ):
        if selection.get("SelectionName") == name:
            return selection["SelectionId"]
    created = backup.create_backup_selection(
        BackupPlanId=plan_id,
        BackupSelection={
            "SelectionName": name,
            "IamRoleArn": iam_role_arn,
            "ListOfTags": [
                {
                    "ConditionType": "STRINGEQUALS",
                    "ConditionKey": tag_key,
                    "ConditionValue": tag_value,
                }
            ],
        },
    )
    return created["SelectionId"]


# --- restore testing ---------------------------------------------------------------------


def ensure_restore_testing_plan(backup, name: str, vault_arn: str, schedule: str) -> bool:
    """A weekly restore of the latest recovery point in the vault; True if created."""
    for plan in _pages(backup.list_restore_testing_plans, "RestoreTestingPlans"):
        if plan.get("RestoreTestingPlanName") == name:
            return False
    backup.create_restore_testing_plan(
        RestoreTestingPlan={
            "RestoreTestingPlanName": name,
            "ScheduleExpression": schedule,
            "StartWindowHours": 24,
            "RecoveryPointSelection": {
                "Algorithm": "LATEST_WITHIN_WINDOW",
                "IncludeVaults": [vault_arn],
                "RecoveryPointTypes": ["SNAPSHOT"],
                "SelectionWindowDays": 7,
            },
        }
    )
    return True


def ensure_restore_testing_selection(
    backup, plan_name: str, name: str, iam_role_arn: str, tag_key: str, tag_value: str
) -> bool:
    """Restore-test the S3 buckets carrying the backup tag; True if created."""
    for selection in _pages(
        backup.list_restore_testing_selections,
        "RestoreTestingSelections",
        RestoreTestingPlanName=plan_name,
    ):
        if selection.get("RestoreTestingSelectionName") == name:
            return False
    backup.create_restore_testing_selection(
        RestoreTestingPlanName=plan_name,
        RestoreTestingSelection={
            "RestoreTestingSelectionName": name,
            "ProtectedResourceType": "S3",
            "IamRoleArn": iam_role_arn,
            "ProtectedResourceConditions": {
                "StringEquals": [{"Key": f"aws:ResourceTag/{tag_key}", "Value": tag_value}]
            },
            "ValidationWindowHours": 24,
        },
    )
    return True


def set_up_backup(home_backup, copy_backup, settings: BackupSettings) -> dict[str, str]:
    """Vaults (both regions, locked), plan with cross-region copy, selection, restore testing."""
    copy_state = ensure_backup_vault(
        copy_backup, settings.vault_name, settings.copy_kms_key_arn, settings.tags
    )
    _lock(copy_backup, settings, copy_state)
    home_state = ensure_backup_vault(
        home_backup, settings.vault_name, settings.kms_key_arn, settings.tags
    )
    _lock(home_backup, settings, home_state)
    plan_id = ensure_backup_plan(
        home_backup,
        backup_plan_document(settings, copy_state["BackupVaultArn"]),
        settings.tags,
    )
    selection_id = ensure_tag_selection(
        home_backup,
        plan_id,
        "tagged-resources",
        settings.iam_role_arn,
        TAG_KEY,
        settings.project,
    )
    ensure_restore_testing_plan(
        home_backup,
        settings.restore_testing_plan_name,
        home_state["BackupVaultArn"],
        settings.restore_test_schedule,
    )
    ensure_restore_testing_selection(
        home_backup,
        settings.restore_testing_plan_name,
        "lake_buckets",
        settings.iam_role_arn,
        TAG_KEY,
        settings.project,
    )
    return {
        "vault_arn": home_state["BackupVaultArn"],
        "copy_vault_arn": copy_state["BackupVaultArn"],
        "plan_id": plan_id,
        "selection_id": selection_id,
    }


def _lock(backup, settings: BackupSettings, state: dict) -> bool:
    return ensure_vault_lock(
        backup,
        settings.vault_name,
        settings.lock_min_retention_days,
        settings.lock_max_retention_days,
        settings.lock_changeable_for_days,
        state=state,
    )


# --- S3: Object Lock on records, versioning and the backup tag on data buckets -------------


def _bucket_exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def _create_bucket(s3, bucket: str, region: str, object_lock: bool) -> None:
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    if object_lock:
        params["ObjectLockEnabledForBucket"] = True
    s3.create_bucket(**params)


def ensure_versioning(s3, bucket: str) -> bool:
    """Turn on versioning (required by AWS Backup for S3 and by Object Lock); True if changed."""
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
        return False
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return True


def ensure_backup_tag(s3, bucket: str, tag_key: str, tag_value: str) -> bool:
    """Add the tag the backup selection matches, keeping other tags; True if changed."""
    tags = _bucket_tags(s3, bucket)
    if {"Key": tag_key, "Value": tag_value} in tags:
        return False
    kept = [t for t in tags if t["Key"] != tag_key]
    s3.put_bucket_tagging(
        Bucket=bucket, Tagging={"TagSet": kept + [{"Key": tag_key, "Value": tag_value}]}
    )
    return True


def ensure_records_bucket(
    s3, bucket: str, region: str, retention_years: int = RECORDS_RETENTION_YEARS
) -> bool:
    """Records bucket with Object Lock in compliance mode by default; True if anything changed.

    Compliance mode means no user, root included, can delete or overwrite an
    object version before its retain-until date.
    """
    changed = False
    if not _bucket_exists(s3, bucket):
        _create_bucket(s3, bucket, region, object_lock=True)
        changed = True
    changed |= ensure_versioning(s3, bucket)
    desired = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": retention_years}},
    }
    try:
        current = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as exc:
        if _error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
        current = {}
    # Compare by meaning: S3 may echo "Days": 0 next to "Years".
    retention = current.get("Rule", {}).get("DefaultRetention", {})
    if _subset_differs(desired, current) or retention.get("Days"):
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=desired)
        changed = True
    return changed


def landing_bucket_pattern(project: str) -> re.Pattern[str]:
    """Names infra/storage.yaml gives landing buckets: ``<project>-<env>-landing[-<account>]``."""
    return re.compile(rf"^{re.escape(project)}-[a-z0-9]+-landing(-[0-9]{{12}})?$")


def refuse_landing_bucket(s3, bucket: str, project: str = "fraudops") -> None:
    """Raise ``ProtectionError`` if ``bucket`` is a landing bucket (by name or by its tag)."""
    why = ""
    if landing_bucket_pattern(project).match(bucket):
        why = "its name is the landing bucket's (infra/storage.yaml LandingBucket)"
    elif _bucket_exists(s3, bucket) and RAW_CARDHOLDER_TAG in _bucket_tags(s3, bucket):
        why = f"it is tagged {RAW_CARDHOLDER_TAG['Key']}={RAW_CARDHOLDER_TAG['Value']}"
    if why:
        raise ProtectionError(
            f"refusing to back up s3://{bucket}: {why}. Raw landing drops may hold card "
            "numbers in clear and must never reach a locked backup vault; pass the lake, "
            "artifacts and records buckets only (--data-bucket)"
        )


def _bucket_tags(s3, bucket: str) -> list[dict[str, str]]:
    try:
        return s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    except ClientError as exc:
        if _error_code(exc) != "NoSuchTagSet":
            raise
        return []


def set_up_storage(
    s3,
    records_bucket: str,
    data_buckets: Sequence[str],
    region: str,
    project: str = "fraudops",
    retention_years: int = RECORDS_RETENTION_YEARS,
) -> dict[str, bool]:
    """Object Lock on the records bucket; versioning and the backup tag on every bucket.

    A landing bucket among them is refused before anything is changed.
    """
    for bucket in (records_bucket, *data_buckets):
        refuse_landing_bucket(s3, bucket, project)
    changes = {records_bucket: ensure_records_bucket(s3, records_bucket, region, retention_years)}
    changes[records_bucket] |= ensure_backup_tag(s3, records_bucket, TAG_KEY, project)
    for bucket in data_buckets:
        if not _bucket_exists(s3, bucket):
            _create_bucket(s3, bucket, region, object_lock=False)
        changed = ensure_versioning(s3, bucket)
        changes[bucket] = ensure_backup_tag(s3, bucket, TAG_KEY, project) or changed
    return changes


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compliance.aws_backup",
        description="Create (idempotently) the AWS Backup and S3 Object Lock protection.",
    )
    parser.add_argument("--region", required=True)
    parser.add_argument("--copy-region", required=True, help="region of the copy vault")
    parser.add_argument("--kms-key-arn", required=True)
    parser.add_argument("--copy-kms-key-arn", required=True)
    parser.add_argument("--role-arn", required=True, help="role AWS Backup assumes")
    parser.add_argument("--records-bucket", required=True)
    parser.add_argument("--data-bucket", action="append", default=[],
                        help="repeatable; never the landing bucket (refused)")
    parser.add_argument("--project", default="fraudops")
    parser.add_argument("--environment", default="dev")
    args = parser.parse_args(argv)
    if args.copy_region == args.region:
        parser.error(
            "--copy-region must differ from --region (the copy protects against a region loss)"
        )

    import boto3

    settings = BackupSettings(
        kms_key_arn=args.kms_key_arn,
        copy_kms_key_arn=args.copy_kms_key_arn,
        iam_role_arn=args.role_arn,
        copy_region=args.copy_region,
        project=args.project,
        environment=args.environment,
    )
    try:
        storage = set_up_storage(
            boto3.client("s3", region_name=args.region),
            args.records_bucket,
            args.data_bucket,
            args.region,
            args.project,
        )
    except ProtectionError as exc:
        parser.error(str(exc))
    backup = set_up_backup(
        boto3.client("backup", region_name=args.region),
        boto3.client("backup", region_name=args.copy_region),
        settings,
    )
    for bucket, changed in storage.items():
        print(f"s3://{bucket}: {'updated' if changed else 'already protected'}")
    for key, value in backup.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
