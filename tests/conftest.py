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
