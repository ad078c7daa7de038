"""Packaging and deploying the stacks: bundle contents and the CloudFormation calls."""

from __future__ import annotations

import json
import zipfile

import boto3
import pytest
from botocore.stub import ANY, Stubber

from pipelines.cli.main import main
from pipelines.workflow import artifacts
from pipelines.workflow.artifacts import SOURCE_FILES, BuildError
from pipelines.workflow.declaration import FRAUD_WORKFLOW
from pipelines.workflow.render import to_state_machine
from pipelines.workflow.stack import Environment, deploy_stack, stack_parameters


def build_artifacts(out_dir):
    """Sources and the state machine only: layers are tested in test_lambda_artifacts."""
    return {
        "lambda.zip": artifacts.build_lambda_bundle(out_dir),
        "source.zip": artifacts.build_source_archive(out_dir),
        "workflow.asl.json": artifacts.build_state_machine(out_dir),
    }


def test_artifacts_hold_handlers_their_package_and_the_rendered_workflow(tmp_path):
    artifacts = build_artifacts(tmp_path)
    names = zipfile.ZipFile(artifacts["lambda.zip"]).namelist()
    assert "lambdas/failure_notification/handler.py" in names
    assert "pipelines/core/failures.py" in names
    assert not any("__pycache__" in n for n in names)
    rendered = json.loads(artifacts["workflow.asl.json"].read_text())
    assert rendered == to_state_machine(FRAUD_WORKFLOW)


def test_source_archive_holds_what_codebuild_needs_for_pip_install(tmp_path):
    names = set(zipfile.ZipFile(build_artifacts(tmp_path)["source.zip"]).namelist())
    assert set(SOURCE_FILES) <= names  # setup.py, pyproject.toml, the buildspec, ...
    for module in ("pipelines/fraud/pipeline.py", "processing/preprocess.py", "training/train.py",
                   "infra/cicd.yaml", "pipelines/data/lake/queries/fraud_rate_by_day.sql",
                   "lambdas/deploy/handler.py"):
        assert module in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_source_archive_needs_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "import_root", lambda: tmp_path)
    with pytest.raises(BuildError, match="has no setup.py, pyproject.toml"):
        artifacts.build_source_archive(tmp_path)


def test_stack_parameters_only_pass_what_the_template_declares():
    env = Environment("staging", code_version="abc123")
    assert stack_parameters(env, "storage", {"CopyRegionVaultArn": "x"}) == {}
    assert stack_parameters(env, "ml", {"CopyRegionVaultArn": "x"}) == {"CodeVersion": "abc123"}
    assert stack_parameters(env, "backup", {"CopyRegionVaultArn": "x"}) == {
        "CopyRegionVaultArn": "x"
    }


def _client():
    return boto3.client("cloudformation", region_name="us-east-1")


def test_new_stack_is_created_with_termination_protection_in_prod():
    client = _client()
    waited = []
    with Stubber(client) as stub:
        stub.add_client_error("describe_stacks", "ValidationError",
                              "Stack with id fraudops-prod-storage does not exist")
        stub.add_response(
            "create_stack",
            {"StackId": "arn:stack"},
            {"StackName": "fraudops-prod-storage", "TemplateBody": ANY, "Parameters": ANY,
             "Capabilities": ["CAPABILITY_NAMED_IAM"], "Tags": ANY,
             "EnableTerminationProtection": True},
        )
        action = deploy_stack(client, Environment("prod"), "storage", {},
                              wait=lambda kind, name: waited.append((kind, name)))
    assert action == "created"
    assert waited == [("create", "fraudops-prod-storage")]


def test_existing_stack_is_updated_and_no_change_is_success():
    client = _client()
    existing = {"Stacks": [{"StackName": "fraudops-dev-ml", "StackStatus": "CREATE_COMPLETE",
                            "CreationTime": "2026-01-01T00:00:00Z"}]}
    with Stubber(client) as stub:
        stub.add_response("describe_stacks", existing, {"StackName": "fraudops-dev-ml"})
        stub.add_response("update_stack", {"StackId": "arn:stack"})
        stub.add_response("describe_stacks", existing, {"StackName": "fraudops-dev-ml"})
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")
        env = Environment("dev")
        assert deploy_stack(client, env, "ml", {}, wait=lambda *a: None) == "updated"
        assert deploy_stack(client, env, "ml", {}, wait=lambda *a: None) == "unchanged"
        stub.assert_no_pending_responses()


def test_backup_stack_needs_a_copy_region(capsys):
    assert main(["infra", "deploy", "--env", "dev", "--only", "backup"]) == 2
    assert "--copy-region-vault-arn" in capsys.readouterr().err


def test_render_prints_the_state_machine(capsys):
    assert main(["infra", "render"]) == 0
    assert json.loads(capsys.readouterr().out) == to_state_machine(FRAUD_WORKFLOW)
