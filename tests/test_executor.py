"""The local executor runs hand-written SageMaker pipeline definitions end to end.

Steps are tiny standalone Python scripts written into the test's object
store, so every test is fast and independent of the real pipeline.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main as cli
from pipelines.core.workspace import Workspace
from pipelines.model.executor import (
    DefinitionError,
    ExecutionStore,
    ExecutorError,
    ParameterError,
    UnsupportedFeatureError,
    check_supported,
    parse_definition,
    resume_pipeline_execution,
    run_pipeline_definition,
)
from pipelines.model.executor.expressions import ResolutionContext, evaluate_condition
from pipelines.model.executor.policies import parse_duration, retry_delay

CODE = "s3://artifacts/code"

PREPROCESS = """
import argparse, json, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--base-dir", required=True)
parser.add_argument("--tag", default="")
args = parser.parse_args()
base = pathlib.Path(args.base_dir) / "processing"
rows = (base / "input" / "raw" / "data.txt").read_text().split()
(base / "train" / "data.txt").write_text("\\n".join(r.upper() + args.tag for r in rows))
print(f"preprocessed {len(rows)} rows")
"""

TRAIN = """
import argparse, json, os, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--label", default="")
args = parser.parse_args()
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "data.txt").read_text().split()
hps = json.loads(os.environ["SM_HPS"])
model = {"rows": rows, "epochs": args.epochs, "label": args.label, "hps": hps}
(pathlib.Path(os.environ["SM_MODEL_DIR"]) / "model.json").write_text(json.dumps(model))
print("validation-auc: 0.875")
"""

EVALUATE = """
import argparse, json, pathlib, tarfile
parser = argparse.ArgumentParser()
parser.add_argument("--base-dir", required=True)
args = parser.parse_args()
base = pathlib.Path(args.base_dir) / "processing"
with tarfile.open(base / "model" / "model.tar.gz") as tar:
    model = json.load(tar.extractfile("model.json"))
score = len(model["rows"]) / 10
out = base / "evaluation" / "evaluation.json"
out.write_text(json.dumps({"metrics": {"score": {"value": score}}, "rows": model["rows"]}))
"""


class FakeRegistry:
    """Records CreateModelPackage requests like the local model registry would take them."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str]] = []

    def create_model_package(self, request: dict[str, Any], created_by: str) -> dict[str, Any]:
        self.requests.append((request, created_by))
        arn = f"arn:aws:sagemaker:local:000000000000:model-package/fraud/{len(self.requests)}"
        return {"ModelPackageArn": arn, "ModelApprovalStatus": request["ModelApprovalStatus"]}


# --- fixture builders ----------------------------------------------------------


def put(ws: Workspace, uri: str, text: str) -> Path:
    path = ws.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def put_tarball(ws: Workspace, uri: str, files: dict[str, str]) -> None:
    path = ws.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def processing_step(
    name: str,
    script: str,
    inputs: list[tuple[str, Any, str]],
    outputs: list[tuple[str, Any, str]],
    arguments: list[Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A CreateProcessingJob-shaped step running ``script`` (an s3 URI of a .py file)."""
    code = [("code", script, "/opt/ml/processing/input/code")]
    app: dict[str, Any] = {
        "ImageUri": "sagemaker-scikit-learn:1.2-1-cpu-py3",
        "ContainerEntrypoint": [
            "python3",
            f"/opt/ml/processing/input/code/{script.split('/')[-1]}",
        ],
    }
    if arguments is not None:
        app["ContainerArguments"] = arguments
    return {
        "Name": name,
        "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large"}},
            "AppSpecification": app,
            "RoleArn": "arn:aws:iam::123456789012:role/x",
            "ProcessingInputs": [
                {
                    "InputName": n,
                    "S3Input": {
                        "S3Uri": uri,
                        "LocalPath": local,
                        "S3DataType": "S3Prefix",
                        "S3InputMode": "File",
                    },
                }
                for n, uri, local in [*inputs, *code]
            ],
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": n,
                        "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": "EndOfJob"},
                    }
                    for n, uri, local in outputs
                ]
            },
        },
        **extra,
    }


def training_step(name: str, channel_uri: Any, epochs: Any, **extra: Any) -> dict[str, Any]:
    """A framework script-mode CreateTrainingJob step (sagemaker_program + submit dir)."""
    return {
        "Name": name,
        "Type": "Training",
        "Arguments": {
            "AlgorithmSpecification": {
                "TrainingImage": "sagemaker-xgboost:3.0-5",
                "TrainingInputMode": "File",
                "MetricDefinitions": [
                    {"Name": "validation:auc", "Regex": r"validation-auc: ([0-9.]+)"}
                ],
            },
            "HyperParameters": {
                "epochs": epochs,
                "sagemaker_program": '"train.py"',
                "sagemaker_submit_directory": f'"{CODE}/train/sourcedir.tar.gz"',
            },
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": channel_uri}
                    },
                }
            ],
            "OutputDataConfig": {"S3OutputPath": "s3://artifacts/models"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        },
        **extra,
    }


def fraud_like_definition(steps_reversed: bool = True) -> dict[str, Any]:
    """Preprocess -> Train -> Evaluate -> Gate -> Register | Fail, using every expression kind."""
    preprocess = processing_step(
        "Preprocess",
        f"{CODE}/preprocess.py",
        inputs=[("raw", {"Get": "Parameters.InputData"}, "/opt/ml/processing/input/raw")],
        outputs=[
            (
                "train",
                {
                    "Std:Join": {
                        "On": "/",
                        "Values": [
                            "s3://artifacts/runs",
                            {"Get": "Execution.PipelineExecutionId"},
                            "train",
                        ],
                    }
                },
                "/opt/ml/processing/train",
            )
        ],
        arguments=["--base-dir", "/opt/ml", "--tag", {"Get": "Parameters.Tag"}],
    )
    train = training_step(
        "Train",
        {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"},
        {"Get": "Parameters.Epochs"},
    )
    evaluate = processing_step(
        "Evaluate",
        f"{CODE}/evaluate.py",
        inputs=[
            (
                "model",
                {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
                "/opt/ml/processing/model",
            )
        ],
        outputs=[("evaluation", "s3://artifacts/evaluation", "/opt/ml/processing/evaluation")],
        PropertyFiles=[
            {
                "PropertyFileName": "EvaluationReport",
                "OutputName": "evaluation",
                "FilePath": "evaluation.json",
            }
        ],
    )
    register = {
        "Name": "Register",
        "Type": "RegisterModel",
        "Arguments": {
            "ModelPackageGroupName": "fraud",
            "ModelApprovalStatus": {"Get": "Parameters.ApprovalStatus"},
            "InferenceSpecification": {
                "Containers": [
                    {
                        "Image": "sagemaker-xgboost:3.0-5",
                        "ModelDataUrl": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
                    }
                ],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
        },
    }
    fail = {
        "Name": "QualityTooLow",
        "Type": "Fail",
        "Arguments": {
            "ErrorMessage": {
                "Std:Join": {
                    "On": " ",
                    "Values": [
                        "score below",
                        {"Get": "Parameters.MinScore"},
                        "in",
                        {"Get": "Execution.PipelineName"},
                    ],
                }
            }
        },
    }
    gate = {
        "Name": "Gate",
        "Type": "Condition",
        "Arguments": {
            "Conditions": [
                {
                    "Type": "GreaterThanOrEqualTo",
                    "LeftValue": {
                        "Std:JsonGet": {
                            "PropertyFile": {
                                "Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"
                            },
                            "Path": "metrics.score.value",
                        }
                    },
                    "RightValue": {"Get": "Parameters.MinScore"},
                }
            ],
            "IfSteps": [register],
            "ElseSteps": [fail],
        },
    }
    steps = [preprocess, train, evaluate, gate]
    return {
        "Version": "2020-12-01",
        "Parameters": [
            {"Name": "InputData", "Type": "String", "DefaultValue": "s3://landing/raw"},
            {"Name": "Tag", "Type": "String", "DefaultValue": "_v1"},
            {"Name": "Epochs", "Type": "Integer", "DefaultValue": 3},
            {"Name": "MinScore", "Type": "Float", "DefaultValue": 0.2},
            {"Name": "ApprovalStatus", "Type": "String", "DefaultValue": "PendingManualApproval"},
        ],
        "PipelineExperimentConfig": {
            "ExperimentName": {"Get": "Execution.PipelineName"},
            "TrialName": {"Get": "Execution.PipelineExecutionId"},
        },
        "Steps": list(reversed(steps)) if steps_reversed else steps,
    }


def seed(ws: Workspace, rows: str = "a b c") -> None:
    put(ws, "s3://landing/raw/data.txt", rows)
    put(ws, f"{CODE}/preprocess.py", PREPROCESS)
    put(ws, f"{CODE}/evaluate.py", EVALUATE)
    put_tarball(ws, f"{CODE}/train/sourcedir.tar.gz", {"train.py": TRAIN})


def run(ws: Workspace, definition: dict[str, Any], registry: Any = None, **params: Any):
    return run_pipeline_definition(
        json.dumps(definition),
        ws,
        params,
        started_by="tester",
        pipeline_name="fraud-test",
        progress=False,
        registry=registry or FakeRegistry(),
    )


def single_step(name: str, script_uri: str, script: str, ws: Workspace, **extra: Any) -> dict:
    put(ws, script_uri, script)
    return {
        "Version": "2020-12-01",
        "Parameters": [],
        "Steps": [processing_step(name, script_uri, [], [], **extra)],
    }


# --- a whole pipeline ----------------------------------------------------------


def test_pipeline_resolves_every_expression_and_registers_the_trained_model(workspace):
    seed(workspace)
    registry = FakeRegistry()
    summary = run(workspace, fraud_like_definition(), registry, Epochs="5")

    assert summary.status == "Succeeded", summary.failure_reason
    assert not list((workspace.executions / summary.execution_id / "scratch").glob("*/*"))
    # Steps were listed in reverse; implicit Get references put them in data order.
    assert [s.name for s in summary.steps] == [
        "Preprocess",
        "Train",
        "Evaluate",
        "Gate",
        "Register",
    ]
    # Std:Join with Execution.PipelineExecutionId and a parameter-valued argument.
    train_out = workspace.local_path(f"s3://artifacts/runs/{summary.execution_id}/train/data.txt")
    assert train_out.read_text().split() == ["A_v1", "B_v1", "C_v1"]
    # Training: channel from the Preprocess output, hyper-parameter from a parameter (coerced).
    train = summary.step("Train")
    model_uri = train.properties["ModelArtifacts"]["S3ModelArtifacts"]
    job = train.properties["TrainingJobName"]
    assert model_uri == f"s3://artifacts/models/{job}/output/model.tar.gz"
    with tarfile.open(workspace.local_path(model_uri)) as tar:
        model = json.load(tar.extractfile("model.json"))
    assert model["epochs"] == 5 and model["rows"] == ["A_v1", "B_v1", "C_v1"]
    assert model["hps"]["epochs"] == 5 and "sagemaker_program" in model["hps"]
    assert train.properties["FinalMetricDataList"] == [
        {"MetricName": "validation:auc", "Value": 0.875}
    ]
    # JsonGet on the property file: 3 rows -> score 0.3 >= 0.2, so the If branch ran.
    gate = summary.step("Gate")
    assert gate.metadata == {"Condition": {"Outcome": "True"}}
    assert gate.inputs["Conditions"][0]["LeftValue"] == pytest.approx(0.3)
    assert gate.inputs["Conditions"][0]["RightValue"] == 0.2
    ((request, created_by),) = registry.requests
    assert request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model_uri
    assert request["ModelApprovalStatus"] == "PendingManualApproval"
    assert created_by == "tester"
    assert summary.step("Register").metadata["RegisterModel"]["Arn"].endswith("fraud/1")


def test_register_uses_the_workspace_registry_and_the_run_is_audited(workspace):
    from pipelines.compliance.audit import list_entries
    from pipelines.model.registry import LocalModelRegistry

    seed(workspace)
    summary = run_pipeline_definition(
        json.dumps(fraud_like_definition()),
        workspace,
        {},
        started_by="alice",
        pipeline_name="fraud-test",
        progress=False,
    )
    assert summary.succeeded, summary.failure_reason
    arn = summary.step("Register").metadata["RegisterModel"]["Arn"]
    package = LocalModelRegistry(workspace.registry_db).describe_model_package(arn)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    model_uri = summary.step("Train").properties["ModelArtifacts"]["S3ModelArtifacts"]
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model_uri

    (entry,) = list_entries(workspace, action="pipeline.execution")
    assert entry["actor"] == "alice" and entry["subject"] == summary.execution_arn
    assert entry["details"]["status"] == "Succeeded"
    assert entry["details"]["steps"]["Register"] == "Succeeded"
    assert entry["details"]["parameters"]["Epochs"] == 3


def test_condition_takes_else_branch_and_fail_step_fails_with_resolved_message(workspace):
    seed(workspace)
    registry = FakeRegistry()
    summary = run(workspace, fraud_like_definition(), registry, MinScore=0.9)

    assert summary.status == "Failed"
    assert summary.failure_reason == "score below 0.9 in fraud-test"
    assert summary.step("Gate").metadata == {"Condition": {"Outcome": "False"}}
    assert summary.step("QualityTooLow").status == "Failed"
    assert registry.requests == []
    store = ExecutionStore(workspace.executions)
    described = store.describe_pipeline_execution(summary.execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert {"Name": "MinScore", "Value": 0.9} in described["PipelineParameters"]


def test_failing_step_fails_the_execution_with_its_log_tail(workspace):
    seed(workspace)
    put(workspace, f"{CODE}/preprocess.py", "raise ValueError('bad row 17 in data.txt')\n")
    summary = run(workspace, fraud_like_definition())

    assert summary.status == "Failed"
    assert [s.name for s in summary.steps] == ["Preprocess"]  # nothing downstream ran
    reason = summary.failure_reason
    assert reason.startswith("step Preprocess: AlgorithmError")
    assert "exited with code 1" in reason and "bad row 17 in data.txt" in reason
    log = Path(summary.step("Preprocess").log_path)
    assert "Traceback" in log.read_text()
    listed = ExecutionStore(workspace.executions).list_pipeline_execution_steps(
        summary.execution_id
    )["PipelineExecutionSteps"]
    assert listed[0]["StepStatus"] == "Failed" and "bad row 17" in listed[0]["FailureReason"]

    # The same status-change event SageMaker puts on EventBridge, on the workspace bus,
    # and the failure-notification code understands it.
    events = [
        json.loads(line)["event"]
        for line in (workspace.state_dir / "events.jsonl").read_text().splitlines()
        if "event" in json.loads(line)
    ]
    (failed,) = [e for e in events if e["detail"].get("currentStepStatus") == "Failed"]
    assert failed["detail-type"] == "SageMaker Model Building Pipeline Execution Step Status Change"
    assert failed["detail"]["logPath"] == str(log)
    from pipelines.core.failures import describe_failure

    described = describe_failure(failed)
    assert described["step"] == "Preprocess" and "bad row 17" in described["error"]
    assert events[-1]["detail"]["currentPipelineExecutionStatus"] == "Failed"


def test_container_script_cannot_import_the_project_package(workspace):
    leaky = "import pipelines.core.workspace\n"
    definition = single_step("Leaky", f"{CODE}/leaky.py", leaky, workspace)
    summary = run(workspace, definition)
    assert summary.status == "Failed"
    assert "ModuleNotFoundError: No module named 'pipelines'" in summary.failure_reason


def test_a_script_that_changes_its_inputs_leaves_the_object_store_alone(workspace):
    put(workspace, "s3://landing/raw/data.txt", "original")
    definition = single_step(
        "Scribble",
        f"{CODE}/scribble.py",
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser(); p.add_argument('--base-dir'); a = p.parse_args()\n"
        "f = pathlib.Path(a.base_dir) / 'processing/input/raw/data.txt'\n"
        "f.write_text('scribbled')\n",
        workspace,
    )
    definition["Steps"][0]["Arguments"]["ProcessingInputs"].append(
        {
            "InputName": "raw",
            "S3Input": {"S3Uri": "s3://landing/raw", "LocalPath": "/opt/ml/processing/input/raw"},
        }
    )
    assert run(workspace, definition).succeeded
    assert workspace.local_path("s3://landing/raw/data.txt").read_text() == "original"


# --- caching -----------------------------------------------------------------------


def cached(definition: dict[str, Any]) -> dict[str, Any]:
    for step in definition["Steps"]:
        if step["Type"] in ("Processing", "Training"):
            step["CacheConfig"] = {"Enabled": True, "ExpireAfter": "P30D"}
    return definition


def test_cache_skips_unchanged_steps_and_reruns_changed_ones(workspace):
    seed(workspace)
    definition = cached(fraud_like_definition())
    first = run(workspace, definition)
    assert first.succeeded and not any(s.cache_hit for s in first.steps)

    # As on SageMaker, output locations (here holding the execution id) are not in the key.
    hit = run(workspace, definition)
    assert hit.succeeded
    assert {s.name for s in hit.steps if s.cache_hit} == {"Preprocess", "Train", "Evaluate"}
    assert hit.step("Train").metadata["CacheHit"] == first.execution_id
    assert hit.step("Preprocess").properties == first.step("Preprocess").properties
    assert not (workspace.executions / hit.execution_id / "logs" / "Preprocess.log").exists()
    steps = ExecutionStore(workspace.executions).list_pipeline_execution_steps(hit.execution_id)
    assert steps["PipelineExecutionSteps"][-1]["CacheHitResult"][
        "SourcePipelineExecutionArn"
    ].endswith(first.execution_id)

    # A parameter change reaches Preprocess's arguments: everything downstream re-runs.
    tagged = run(workspace, definition, Tag="_v2")
    assert not any(s.cache_hit for s in tagged.steps)

    # Changed code is a changed input even under the same URI and arguments.
    put(workspace, f"{CODE}/evaluate.py", EVALUATE + "\nprint('changed')\n")
    recoded = run(workspace, definition, Tag="_v2")
    assert [s.name for s in recoded.steps if s.cache_hit] == ["Preprocess", "Train"]
    assert not recoded.step("Evaluate").cache_hit

    # So is changed input data.
    put(workspace, "s3://landing/raw/data.txt", "a b c d")
    more_rows = run(workspace, definition, Tag="_v2")
    assert not any(s.cache_hit for s in more_rows.steps)


def test_cache_miss_when_previous_outputs_were_overwritten(workspace):
    definition = single_step(
        "Write",
        f"{CODE}/write.py",
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser(); p.add_argument('--base-dir'); a = p.parse_args()\n"
        "(pathlib.Path(a.base_dir) / 'processing/out/x.txt').write_text('fresh')\n",
        workspace,
    )
    definition["Steps"][0]["Arguments"]["ProcessingOutputConfig"] = {
        "Outputs": [
            {
                "OutputName": "out",
                "S3Output": {"S3Uri": "s3://artifacts/out", "LocalPath": "/opt/ml/processing/out"},
            }
        ]
    }
    cached(definition)
    assert run(workspace, definition).succeeded
    put(workspace, "s3://artifacts/out/x.txt", "tampered")
    again = run(workspace, definition)
    assert not again.step("Write").cache_hit
    assert workspace.local_path("s3://artifacts/out/x.txt").read_text() == "fresh"


# --- retries and resume -------------------------------------------------------------

FLAKY = """
import os, pathlib, signal, sys
marker = pathlib.Path(sys.argv[sys.argv.index("--marker") + 1])
if not marker.exists():
    marker.write_text("first attempt")
    os.kill(os.getpid(), signal.SIGKILL)  # what an OOM kill or lost host looks like
print("second attempt ok")
"""


def test_retry_policy_retries_an_internal_error_then_succeeds(workspace, tmp_path):
    retry = [
        {
            "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"],
            "MaxAttempts": 2,
            "IntervalSeconds": 0,
            "BackoffRate": 2.0,
        }
    ]
    definition = single_step(
        "Flaky",
        f"{CODE}/flaky.py",
        FLAKY,
        workspace,
        arguments=["--marker", str(tmp_path / "marker")],
        RetryPolicies=retry,
    )
    summary = run(workspace, definition)
    assert summary.status == "Succeeded", summary.failure_reason
    assert summary.step("Flaky").attempts == 2
    log = Path(summary.step("Flaky").log_path).read_text()
    assert "attempt 1 failed (SageMaker.JOB_INTERNAL_ERROR); retrying in 0.0 s" in log
    assert log.count("$ ") == 2 and "second attempt ok" in log


def test_retry_policy_does_not_retry_a_script_error(workspace):
    retry = [
        {
            "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "Step.SERVICE_FAULT"],
            "MaxAttempts": 3,
            "IntervalSeconds": 0,
        }
    ]
    definition = single_step(
        "Broken", f"{CODE}/broken.py", "raise SystemExit(3)\n", workspace, RetryPolicies=retry
    )
    summary = run(workspace, definition)
    assert summary.status == "Failed"
    assert summary.step("Broken").attempts == 1
    assert "exited with code 3" in summary.failure_reason


def test_resume_reruns_only_what_failed(workspace, tmp_path):
    seed(workspace)
    gate_file = tmp_path / "labels-ready"
    put(
        workspace,
        f"{CODE}/evaluate.py",
        f"import pathlib, sys\nif not pathlib.Path({str(gate_file)!r}).exists():\n"
        "    sys.exit('labels not ready')\n" + EVALUATE,
    )
    first = run(workspace, fraud_like_definition())
    assert first.status == "Failed" and "labels not ready" in first.failure_reason

    gate_file.write_text("ok")
    resumed = resume_pipeline_execution(
        first.execution_id, workspace, progress=False, registry=FakeRegistry()
    )
    assert resumed.execution_id == first.execution_id
    assert resumed.status == "Succeeded", resumed.failure_reason
    # Preprocess and Train were not run again: same job names, one command in their logs.
    for name in ("Preprocess", "Train"):
        assert resumed.step(name).properties == first.step(name).properties
        assert Path(resumed.step(name).log_path).read_text().count("\n$ ") == 0
    assert resumed.step("Evaluate").status == "Succeeded"
    assert resumed.step("Register").status == "Succeeded"
    with pytest.raises(ExecutorError, match="only Failed or Stopped"):
        resume_pipeline_execution(first.execution_id, workspace, progress=False)


class InterruptingRegistry:
    """Simulates Ctrl-C arriving while the Register step runs."""

    def create_model_package(self, request: dict[str, Any], created_by: str) -> dict[str, Any]:
        raise KeyboardInterrupt


def test_interrupted_execution_is_recorded_stopped_and_can_be_resumed(workspace):
    seed(workspace)
    with pytest.raises(KeyboardInterrupt):
        run(workspace, fraud_like_definition(), InterruptingRegistry())
    store = ExecutionStore(workspace.executions)
    (listed,) = store.list_pipeline_executions()["PipelineExecutionSummaries"]
    assert listed["PipelineExecutionStatus"] == "Stopped"
    execution_id = listed["PipelineExecutionId"]
    steps = {
        s["StepName"]: s["StepStatus"]
        for s in store.list_pipeline_execution_steps(execution_id)["PipelineExecutionSteps"]
    }
    assert steps["Register"] == "Stopped" and steps["Train"] == "Succeeded"

    registry = FakeRegistry()
    resumed = resume_pipeline_execution(execution_id, workspace, progress=False, registry=registry)
    assert resumed.status == "Succeeded" and len(registry.requests) == 1


def test_execution_abandoned_by_a_killed_process_is_reaped_and_resumable(workspace):
    seed(workspace)
    # A real process starts the execution and is killed mid-step (no chance to record).
    put(workspace, f"{CODE}/evaluate.py", "import time\ntime.sleep(60)\n")
    starter = (
        "import json, sys\n"
        "from pipelines.core.workspace import Workspace\n"
        "from pipelines.model.executor import run_pipeline_definition\n"
        "run_pipeline_definition(sys.stdin.read(), Workspace.open(sys.argv[1]), {}, 't', "
        "'fraud-test', progress=False)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", starter, str(workspace.root)],
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    process.stdin.write(json.dumps(fraud_like_definition()))
    process.stdin.close()
    store = ExecutionStore(workspace.executions)
    log = None
    for _ in range(600):  # until Evaluate is running
        rows = store.list_pipeline_executions()["PipelineExecutionSummaries"]
        if rows:
            log = workspace.executions / rows[0]["PipelineExecutionId"] / "logs" / "Evaluate.log"
            if log.exists():
                break
        process.poll()
        assert process.returncode is None, "the starter process ended early"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    (row,) = store.list_pipeline_executions()["PipelineExecutionSummaries"]
    assert row["PipelineExecutionStatus"] == "Stopped"
    assert "ended before the execution finished" in row["PipelineExecutionFailureReason"]
    put(workspace, f"{CODE}/evaluate.py", EVALUATE)
    resumed = resume_pipeline_execution(
        row["PipelineExecutionId"], workspace, progress=False, registry=FakeRegistry()
    )
    assert resumed.succeeded, resumed.failure_reason


def test_store_upgrades_records_written_before_the_owner_column(workspace):
    import sqlite3

    workspace.executions.mkdir(parents=True)
    with sqlite3.connect(workspace.executions / "executions.sqlite") as conn:
        conn.execute(
            "CREATE TABLE executions (execution_id TEXT PRIMARY KEY, pipeline_name TEXT NOT NULL,"
            " status TEXT NOT NULL, started_by TEXT NOT NULL, start_time TEXT NOT NULL,"
            " end_time TEXT, last_modified TEXT NOT NULL, parameters TEXT NOT NULL,"
            " definition TEXT NOT NULL, failure_reason TEXT)"
        )
        conn.execute(
            "INSERT INTO executions VALUES ('old1', 'fraud-test', 'Succeeded', 'bob', "
            "'2026-01-01T00:00:00', '2026-01-01T00:01:00', '2026-01-01T00:01:00', '{}', '{}', NULL)"
        )
    store = ExecutionStore(workspace.executions)
    (row,) = store.list_pipeline_executions()["PipelineExecutionSummaries"]
    assert row["PipelineExecutionId"] == "old1" and row["PipelineExecutionStatus"] == "Succeeded"


def test_max_runtime_stops_a_hanging_script(workspace):
    definition = single_step("Hang", f"{CODE}/hang.py", "import time\ntime.sleep(60)\n", workspace)
    definition["Steps"][0]["Arguments"]["StoppingCondition"] = {"MaxRuntimeInSeconds": 1}
    summary = run(workspace, definition)
    assert summary.status == "Failed"
    assert "MaxRuntimeExceeded" in summary.failure_reason


def test_missing_input_names_the_input_and_location(workspace):
    seed(workspace)
    summary = run(workspace, fraud_like_definition(), InputData="s3://landing/nowhere")
    assert summary.status == "Failed"
    assert "input 'raw'" in summary.failure_reason
    assert "s3://landing/nowhere" in summary.failure_reason


def test_training_failure_file_and_model_step(workspace):
    seed(workspace)
    failing = TRAIN.replace(
        'print("validation-auc: 0.875")',
        'import sys\n(pathlib.Path(os.environ["SM_OUTPUT_DIR"]) / "failure").write_text('
        '"label column is all zeros")\nsys.exit(2)',
    )
    put_tarball(workspace, f"{CODE}/train/sourcedir.tar.gz", {"train.py": failing})
    summary = run(workspace, fraud_like_definition())
    assert "failure file: label column is all zeros" in summary.failure_reason

    seed(workspace)
    definition = fraud_like_definition(steps_reversed=False)
    definition["Steps"] = definition["Steps"][:2] + [
        {
            "Name": "CreateModel",
            "Type": "Model",
            "Arguments": {
                "ExecutionRoleArn": "arn:aws:iam::123456789012:role/x",
                "PrimaryContainer": {
                    "Image": "sagemaker-xgboost:3.0-5",
                    "ModelDataUrl": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
                },
            },
        }
    ]
    summary = run(workspace, definition)
    assert summary.succeeded, summary.failure_reason
    model = summary.step("CreateModel")
    assert (
        model.properties["PrimaryContainer"]["ModelDataUrl"]
        == (summary.step("Train").properties["ModelArtifacts"]["S3ModelArtifacts"])
    )
    assert model.metadata["Model"]["Arn"].endswith(model.properties["ModelName"])


def test_retry_delays_follow_interval_backoff_max_attempts_and_expiry():
    policies = [
        {"ExceptionType": ["Step.THROTTLING"], "MaxAttempts": 5, "IntervalSeconds": 9},
        {
            "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"],
            "MaxAttempts": 3,
            "IntervalSeconds": 1,
            "BackoffRate": 2.0,
        },
    ]
    delays = [retry_delay(policies, "SageMaker.JOB_INTERNAL_ERROR", n, 0.0) for n in range(4)]
    assert delays == [1.0, 2.0, 4.0, None]
    assert retry_delay(policies, "Step.THROTTLING", 1, 0.0) == 18.0  # default BackoffRate 2
    assert retry_delay(policies, "SageMaker.CAPACITY_ERROR", 0, 0.0) is None  # not named
    never = [{"ExceptionType": ["AlgorithmError"], "MaxAttempts": 3}]
    assert retry_delay(never, "AlgorithmError", 0, 0.0) is None  # as on SageMaker
    expiring = [
        {"ExceptionType": ["Step.SERVICE_FAULT"], "ExpireAfterMin": 1, "IntervalSeconds": 5}
    ]
    assert retry_delay(expiring, "Step.SERVICE_FAULT", 0, 54.0) == 5.0
    assert retry_delay(expiring, "Step.SERVICE_FAULT", 1, 54.0) is None  # 54 + 10 s > 1 min


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("P30D", timedelta(days=30)),
        ("5y", timedelta(days=1825)),
        ("T16m", timedelta(minutes=16)),
        ("30dT5h", timedelta(days=30, hours=5)),
        ("PT1H", timedelta(hours=1)),
        ("P1W", timedelta(weeks=1)),
    ],
)
def test_cache_expire_after_durations(text, expected):
    assert parse_duration(text) == expected


def test_invalid_expire_after_is_rejected_before_running(workspace):
    definition = cached(fraud_like_definition())
    definition["Steps"][-1]["CacheConfig"]["ExpireAfter"] = "a month"
    with pytest.raises(ExecutorError, match="ExpireAfter 'a month' is not an ISO-8601 duration"):
        run(workspace, definition)


# --- SDK v3 job shapes ------------------------------------------------------------


def test_framework_processor_runproc_and_model_trainer_source_code(workspace):
    """The shapes the SageMaker SDK v3 renders: runproc.sh + sourcedir.tar.gz, sm_drivers."""
    put(workspace, "s3://landing/raw/data.txt", "x y")
    put_tarball(
        workspace,
        f"{CODE}/prep/sourcedir.tar.gz",
        {"preprocess.py": PREPROCESS, "helpers.py": "TAG = '-h'\n"},
    )
    put(
        workspace,
        f"{CODE}/prep/runproc.sh",
        """\
        #!/bin/bash
        set -e
        cd /opt/ml/processing/input/code/
        if [ -f sourcedir.tar.gz ]; then
            tar -xzf sourcedir.tar.gz
        fi
        python3 preprocess.py "$@"
    """,
    )
    preprocess = processing_step(
        "Prep",
        f"{CODE}/prep/",
        [("raw", "s3://landing/raw", "/opt/ml/processing/input/raw")],
        [("train", "s3://artifacts/v3/train", "/opt/ml/processing/train")],
        arguments=["--base-dir", "/opt/ml"],
    )
    preprocess["Arguments"]["ProcessingInputs"].append(
        {
            "InputName": "entrypoint",
            "S3Input": {
                "S3Uri": f"{CODE}/prep/runproc.sh",
                "LocalPath": "/opt/ml/processing/input/entrypoint",
            },
        }
    )
    preprocess["Arguments"]["AppSpecification"]["ContainerEntrypoint"] = [
        "/bin/bash",
        "/opt/ml/processing/input/entrypoint/runproc.sh",
    ]
    put(workspace, f"{CODE}/trainer/code/train.py", TRAIN)
    put(
        workspace,
        f"{CODE}/trainer/sm_drivers/sourcecode.json",
        json.dumps({"source_dir": "src", "entry_script": "train.py", "command": None}),
    )
    put(workspace, f"{CODE}/trainer/sm_drivers/distributed.json", "{}")
    train = training_step(
        "Fit", {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"}, "2"
    )
    hps = train["Arguments"]["HyperParameters"]
    del hps["sagemaker_program"], hps["sagemaker_submit_directory"]
    hps["label"] = "fraud model"
    train["Arguments"]["InputDataConfig"] += [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{CODE}/trainer/{name}"}
            },
        }
        for name in ("code", "sm_drivers")
    ]
    definition = {"Version": "2020-12-01", "Parameters": [], "Steps": [preprocess, train]}

    summary = run(workspace, definition)
    assert summary.status == "Succeeded", summary.failure_reason
    model_uri = summary.step("Fit").properties["ModelArtifacts"]["S3ModelArtifacts"]
    with tarfile.open(workspace.local_path(model_uri)) as tar:
        model = json.load(tar.extractfile("model.json"))
    assert model["rows"] == ["X", "Y"]
    assert model["label"] == "fraud model" and model["epochs"] == 2


def test_model_trainer_command_and_unsupported_shell_entry_script(workspace):
    put(workspace, "s3://landing/train/data.txt", "p q r")
    put(workspace, f"{CODE}/mt/code/train.py", TRAIN)
    sourcecode = {
        "source_dir": "src",
        "entry_script": None,
        "command": "python3 train.py --epochs 4",
        "args": ["--label", "two words"],
    }
    put(workspace, f"{CODE}/mt/sm_drivers/sourcecode.json", json.dumps(sourcecode))
    train = training_step("Fit", "s3://landing/train", "9")
    hps = train["Arguments"]["HyperParameters"]
    del hps["sagemaker_program"], hps["sagemaker_submit_directory"]
    train["Arguments"]["InputDataConfig"] += [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{CODE}/mt/{name}"}
            },
        }
        for name in ("code", "sm_drivers")
    ]
    definition = {"Version": "2020-12-01", "Parameters": [], "Steps": [train]}
    summary = run(workspace, definition)
    assert summary.succeeded, summary.failure_reason
    model_uri = summary.step("Fit").properties["ModelArtifacts"]["S3ModelArtifacts"]
    with tarfile.open(workspace.local_path(model_uri)) as tar:
        model = json.load(tar.extractfile("model.json"))
    # The command's own arguments, not the hyper-parameters (ModelTrainer semantics).
    assert model["epochs"] == 4 and model["label"] == "two words"
    assert model["hps"]["epochs"] == 9  # still visible through SM_HPS

    # Any other shell entry script would need the image's shell environment: a clear error.
    sourcecode = {"source_dir": "src", "entry_script": "train.sh"}
    put(workspace, f"{CODE}/mt/sm_drivers/sourcecode.json", json.dumps(sourcecode))
    summary = run(workspace, definition)
    assert summary.status == "Failed"
    assert "entry script 'train.sh' (only .py)" in summary.failure_reason


def test_sdk_repack_model_step_adds_the_inference_code_to_the_model(workspace):
    """ModelStep's RepackModel training job, running the SDK's own _repack_model.py."""
    import sagemaker.mlops.workflow._repack_model as repack_module

    model_archive = "s3://artifacts/models/job-1/output/model.tar.gz"
    put_tarball(workspace, model_archive, {"model.json": '{"coef": [1, 2]}'})
    put(workspace, f"{CODE}/repack/code/_repack_model.py", Path(repack_module.__file__).read_text())
    put(workspace, f"{CODE}/repack/code/inference.py", "def model_fn(model_dir): ...\n")
    put(
        workspace,
        f"{CODE}/repack/sm_drivers/sourcecode.json",
        json.dumps({"source_dir": "/tmp/src", "entry_script": "_repack_script_launcher.sh"}),
    )
    repack = {
        "Name": "RegisterRepackModel",
        "Type": "Training",
        "Arguments": {
            "AlgorithmSpecification": {"TrainingImage": "sagemaker-scikit-learn:1.2-1"},
            "HyperParameters": {
                "inference_script": "inference.py",
                "model_archive": model_archive,
                "source_dir": "null",
            },
            "InputDataConfig": [
                {
                    "ChannelName": name,
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}},
                }
                for name, uri in (
                    ("training", model_archive),
                    ("code", f"{CODE}/repack/code"),
                    ("sm_drivers", f"{CODE}/repack/sm_drivers"),
                )
            ],
            "OutputDataConfig": {"S3OutputPath": "s3://artifacts/repacked"},
        },
    }
    summary = run(workspace, {"Version": "2020-12-01", "Parameters": [], "Steps": [repack]})
    assert summary.succeeded, summary.failure_reason
    uri = summary.step("RegisterRepackModel").properties["ModelArtifacts"]["S3ModelArtifacts"]
    names = _tar_names(workspace.local_path(uri))
    assert {"model.json", "code/inference.py"} <= names


# --- definition checks ---------------------------------------------------------------


def test_unsupported_step_type_is_a_clear_error_before_anything_runs(workspace):
    definition = fraud_like_definition()
    definition["Steps"].append({"Name": "BatchScore", "Type": "Transform", "Arguments": {}})
    with pytest.raises(UnsupportedFeatureError, match="'BatchScore' has Type 'Transform'"):
        run(workspace, definition)
    assert (
        ExecutionStore(workspace.executions).list_pipeline_executions()[
            "PipelineExecutionSummaries"
        ]
        == []
    )


def test_unsupported_expression_is_a_clear_error(workspace):
    definition = fraud_like_definition()
    definition["Steps"][0]["Arguments"]["ErrorMessage"] = {"Std:Select": {"Index": 0}}
    with pytest.raises(UnsupportedFeatureError, match="'Std:Select'"):
        run(workspace, definition)
    definition = fraud_like_definition()
    definition["Steps"][1]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] = {
        "Get": "Steps.Train.ModelArtifact.S3ModelArtifacts"
    }
    with pytest.raises(
        UnsupportedFeatureError, match="Training step has no property 'ModelArtifact'"
    ):
        check_supported(parse_definition(json.dumps(definition)))


def test_dependencies_cycles_and_unknown_references():
    steps = [
        {"Name": "C", "Type": "Fail", "Arguments": {"ErrorMessage": "x"}, "DependsOn": ["B"]},
        {"Name": "B", "Type": "Fail", "Arguments": {"ErrorMessage": {"Get": "Steps.A.Outcome"}}},
        {
            "Name": "A",
            "Type": "Condition",
            "Arguments": {"Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}]},
        },
    ]
    assert parse_definition({"Steps": steps}).order == ["A", "B", "C"]
    steps[2]["DependsOn"] = ["C"]
    with pytest.raises(DefinitionError, match="cycle: A, B, C"):
        parse_definition({"Steps": steps})
    with pytest.raises(DefinitionError, match="DependsOn 'Nope'"):
        parse_definition(
            {"Steps": [{"Name": "X", "Type": "Fail", "Arguments": {}, "DependsOn": ["Nope"]}]}
        )


def test_parameters_are_typed_and_unknown_ones_rejected(workspace):
    seed(workspace)
    with pytest.raises(ParameterError, match="Epochs must be Integer, got 'many'"):
        run(workspace, fraud_like_definition(), Epochs="many")
    with pytest.raises(ParameterError, match="unknown pipeline parameter.*Epoch\\b"):
        run(workspace, fraud_like_definition(), Epoch=3)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 2}, True),
        ({"Type": "GreaterThan", "LeftValue": 3, "RightValue": "3"}, False),
        ({"Type": "LessThan", "LeftValue": 2.5, "RightValue": {"Get": "Parameters.N"}}, True),
        ({"Type": "LessThanOrEqualTo", "LeftValue": 3, "RightValue": 3}, True),
        ({"Type": "GreaterThanOrEqualTo", "LeftValue": 2, "RightValue": 3}, False),
        ({"Type": "Equals", "LeftValue": {"Get": "Parameters.S"}, "RightValue": "fraud"}, True),
        ({"Type": "Equals", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 3.0}, True),
        ({"Type": "In", "QueryValue": {"Get": "Parameters.S"}, "Values": ["a", "fraud"]}, True),
        ({"Type": "In", "QueryValue": "z", "Values": ["a", "fraud"]}, False),
        ({"Type": "Not", "Condition": {"Type": "Equals", "LeftValue": 1, "RightValue": 2}}, True),
        (
            {
                "Type": "Or",
                "Conditions": [
                    {"Type": "Equals", "LeftValue": 1, "RightValue": 2},
                    {"Type": "LessThan", "LeftValue": 1, "RightValue": 2},
                ],
            },
            True,
        ),
        (
            {"Type": "Or", "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 2}]},
            False,
        ),
    ],
)
def test_condition_kinds(condition, expected):
    definition = parse_definition(
        {
            "Parameters": [{"Name": "N", "Type": "Integer"}, {"Name": "S", "Type": "String"}],
            "Steps": [],
        }
    )
    ctx = ResolutionContext(definition, {"N": 3, "S": "fraud"}, {}, read_json=json.loads)
    assert evaluate_condition(condition, ctx) is expected


# --- CLI ---------------------------------------------------------------------------------


def test_cli_lists_describes_and_shows_steps(workspace, capsys):
    seed(workspace)
    summary = run(workspace, fraud_like_definition(), MinScore=0.9)
    workdir = ["--workdir", str(workspace.root)]
    assert cli.main(["pipeline", "list", *workdir]) == 0
    assert summary.execution_id in capsys.readouterr().out
    assert cli.main(["pipeline", "describe", summary.execution_id, "--json", *workdir]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert described["FailureReason"] == "score below 0.9 in fraud-test"
    assert cli.main(["pipeline", "steps", summary.execution_id, *workdir]) == 0
    out = capsys.readouterr().out
    assert "QualityTooLow" in out and "Gate" in out
    assert cli.main(["pipeline", "describe", "nosuchid", *workdir]) == 2
    assert "no pipeline execution 'nosuchid'" in capsys.readouterr().err
    # Resuming re-runs the failed Fail step (the gate still says no): exit code 1.
    assert cli.main(["pipeline", "resume", summary.execution_id, *workdir]) == 1
    out = capsys.readouterr()
    assert "Failed" in out.out and "score below 0.9" in out.out
    assert "QualityTooLow" in out.err  # the per-step progress display


# --- the real pipeline definition ---------------------------------------------------------


def _processing_input(step: dict[str, Any], name: str) -> str:
    for item in step["Arguments"]["ProcessingInputs"]:
        if item["InputName"] == name:
            return item["S3Input"]["S3Uri"]
    raise AssertionError(f"{step['Name']} has no input {name}")


def _tar_names(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


@pytest.mark.slow
def test_real_definition_uses_only_supported_steps_expressions_and_job_shapes(workspace):
    """Walk the SDK-rendered fraud-detection definition without running its heavy steps."""
    definition_module = pytest.importorskip("pipelines.fraud.definition")
    from pipelines.model.executor.containers import parse_runproc

    text = definition_module.render_definition({}, code_store_dir=workspace.object_store)
    parsed = parse_definition(text)
    seen = check_supported(parsed)  # raises on anything the executor cannot run
    assert {
        "Step:Processing",
        "Step:Training",
        "Step:Condition",
        "Step:RegisterModel",
        "Step:Fail",
        "Get:Parameters",
        "Get:Steps",
        "Std:JsonGet",
    } <= set(seen)
    order = parsed.order
    assert order.index("Preprocess") < order.index("Train") < order.index("Evaluate")
    assert order.index("Evaluate") < order.index(parsed.steps["Register"].branch[0])

    for step in (s.raw for s in parsed.steps.values() if s.type == "Processing"):
        # FrameworkProcessor shape: runproc.sh names a script inside the code tarball.
        runproc = workspace.local_path(_processing_input(step, "entrypoint"))
        plan = parse_runproc(runproc.read_text(), step["Name"])
        code = workspace.local_path(_processing_input(step, "code"))
        assert plan.script in _tar_names(code / plan.archive), step["Name"]
    train = parsed.steps["Train"].arguments["HyperParameters"]
    submit = workspace.local_path(train["sagemaker_submit_directory"].strip('"'))
    assert train["sagemaker_program"].strip('"') in _tar_names(submit)
