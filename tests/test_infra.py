"""CloudFormation templates: cfn-lint clean and the security properties hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

INFRA = Path(__file__).resolve().parent.parent / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))

# Actions whose APIs have no resource-level permissions, so "Resource": "*"
# is the only way to grant them (each is also scoped by a condition or is harmless).
WILDCARD_RESOURCE_ALLOWED = {
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",
    # A CodePipeline job worker (the production deploy Lambda) reports its job's
    # result; these APIs take a job id, not a resource ARN.
    "codepipeline:PutJobSuccessResult",
    "codepipeline:PutJobFailureResult",
    # The workflow polls its backup job by id (no resource-level permissions).
    "backup:DescribeBackupJob",
    # The compliance commands find the stacks' buckets and workgroup by their exports.
    "cloudformation:ListExports",
}


def _load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches, f"{path.name}: {matches}"
    return template


def _resources(kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in TEMPLATES:
        for name, resource in _load(path)["Resources"].items():
            if resource["Type"] == kind:
                found.append((path.name, name, resource.get("Properties", {})))
    return found


def _statements() -> list[tuple[str, str, dict[str, Any]]]:
    """Every IAM statement in identity policies (key policies are resource policies)."""
    found = []
    for template_name, role_name, props in _resources("AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                found.append((template_name, role_name, statement))
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_there_are_templates():
    names = {p.name for p in TEMPLATES}
    assert {"storage.yaml", "catalog.yaml", "ml.yaml", "workflow.yaml", "backup.yaml"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_is_clean(path: Path):
    matches = lint_file(path, config=ManualArgs(regions=["us-east-1"]))
    assert not matches, "\n".join(str(m) for m in matches)


def test_no_wildcard_actions():
    for template, role, statement in _statements():
        for action in _as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{template} {role}: {action}"


def test_wildcard_resources_only_where_the_api_requires_them():
    for template, role, statement in _statements():
        if "*" in _as_list(statement["Resource"]):
            actions = set(_as_list(statement["Action"]))
            assert actions <= WILDCARD_RESOURCE_ALLOWED, f"{template} {role}: {actions}"


def test_every_bucket_is_encrypted_versioned_private_and_tls_only():
    buckets = _resources("AWS::S3::Bucket")
    assert len(buckets) == 4
    policies = {p["Bucket"]["Ref"]: p for _, _, p in _resources("AWS::S3::BucketPolicy")}
    for _, name, props in buckets:
        rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms", name
        assert props["VersioningConfiguration"]["Status"] == "Enabled", name
        assert all(props["PublicAccessBlockConfiguration"].values()), name
        deny = policies[name]["PolicyDocument"]["Statement"][0]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"]["Bool"]["aws:SecureTransport"] == "false", name


def test_records_bucket_has_compliance_mode_object_lock():
    [(_, _, records)] = [b for b in _resources("AWS::S3::Bucket") if b[1] == "RecordsBucket"]
    assert records["ObjectLockEnabled"] is True
    retention = records["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert retention["Mode"] == "COMPLIANCE"
    storage = _load(INFRA / "storage.yaml")
    assert storage["Parameters"]["RecordsRetentionYears"]["Default"] >= 5


def test_backup_vault_lock_is_compliance_mode_and_plan_copies_elsewhere():
    [(_, _, vault)] = _resources("AWS::Backup::BackupVault")
    backup = _load(INFRA / "backup.yaml")
    assert backup["Parameters"]["LockChangeableForDays"]["MinValue"] >= 3
    assert vault["LockConfiguration"]["ChangeableForDays"] == {"Ref": "LockChangeableForDays"}
    [(_, _, plan)] = _resources("AWS::Backup::BackupPlan")
    rule = plan["BackupPlan"]["BackupPlanRule"][0]
    assert rule["CopyActions"][0]["DestinationBackupVaultArn"] == {"Ref": "CopyRegionVaultArn"}
    assert rule["Lifecycle"]["DeleteAfterDays"] == {"Ref": "RetentionDays"}
    assert _resources("AWS::Backup::RestoreTestingPlan")


def test_each_lambda_function_has_its_own_role():
    roles = [props["Role"]["Fn::GetAtt"][0] for _, _, props in _resources("AWS::Lambda::Function")]
    assert len(roles) == len(set(roles)) == 4


def test_lambda_handlers_exist_in_the_repository():
    root = INFRA.parent
    for _, _, props in _resources("AWS::Lambda::Function"):
        module = props["Handler"].rsplit(".", 1)[0]
        assert (root / f"{module}.py").exists(), props["Handler"]


def test_approval_rule_targets_the_deploy_function():
    [rule] = [p for _, n, p in _resources("AWS::Events::Rule") if n == "ApprovalRule"]
    assert rule["EventPattern"]["detail-type"] == ["SageMaker Model Package State Change"]
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["DeployFunction", "Arn"]}


def test_glue_job_arguments_are_the_ones_the_job_reads():
    from companions.glue.transactions_etl import OPTIONAL, REQUIRED

    [(_, _, job)] = _resources("AWS::Glue::Job")
    glue_own = {"--job-language", "--extra-py-files", "--additional-python-modules",
                "--enable-continuous-cloudwatch-log"}
    passed = {k.removeprefix("--") for k in job["DefaultArguments"] if k not in glue_own}
    assert passed <= set(REQUIRED) | set(OPTIONAL)
    assert set(REQUIRED) - {"JOB_NAME"} <= passed
