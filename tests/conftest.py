"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.core.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach AWS: fake credentials and a region for boto3 and the SDK.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh, isolated workspace per test."""
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def os_account(monkeypatch: pytest.MonkeyPatch):
    """Act as an operating-system account: ``os_account("alice")`` (what identity reads)."""
    import pipelines.core.identity as identity

    def become(name: str) -> str:
        monkeypatch.setattr(identity, "os_account", lambda: name)
        return name

    return become


# A second person's SageMaker identity (moto's packages are created by "fake-user-profile-name").
REVIEWER = {
    "UserProfileName": "second-reviewer",
    "DomainId": "fake-domain-id",
    "IamIdentity": {
        "Arn": "arn:aws:sts::123456789012:assumed-role/reviewers/second-reviewer",
        "PrincipalId": "AROAREVIEWER:second-reviewer",
    },
}


@pytest.fixture
def sagemaker_decision():
    """UpdateModelPackage under moto, recorded as made by ``approver`` (a UserContext).

    moto records every update as made by the package's creator; SageMaker
    records the caller. A test of an approval by a second person says who.
    """
    from moto.sagemaker.models import sagemaker_backends

    def decide(client, arn: str, status: str, approver=REVIEWER, **kwargs) -> None:
        client.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status, **kwargs)
        region, account = arn.split(":")[3:5]
        sagemaker_backends[account][region].model_packages[arn].last_modified_by = approver

    return decide
