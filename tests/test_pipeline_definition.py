"""The fraud-detection pipeline definition: steps, gate, parameters and the code it ships.

The definition is rendered once per module (the SDK import and build take
seconds) with its code copied into a temporary object store, the way
``run-pipeline --backend local`` stages it in a workspace.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipelines.fraud.definition import render_pipeline
from pipelines.fraud.modules import ArgumentError, convert_kwargs, convert_struct, convert_tags
from pipelines.fraud.pipeline import QUALITY_METRIC_PATH, pack_source_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("processing", "training", "inference")
KWARGS = {"region": "us-east-1"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    store = tmp_path_factory.mktemp("object-store")
    result = render_pipeline(KWARGS, code_store_dir=store)
    return result, json.loads(result.definition), store


@pytest.fixture(scope="module")
def definition(rendered):
    return rendered[1]


@pytest.fixture(scope="module")
def store(rendered) -> Path:
    return rendered[2]


def script_constant(path: Path, name: str) -> object:
    """A module-level constant of a container script, read without running it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def all_steps(steps: list[dict]) -> list[dict]:
    """Top-level steps and those nested in condition branches."""
    found = []
    for step in steps:
        found.append(step)
        if step["Type"] == "Condition":
            found += all_steps(step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"])
    return found


def step(definition: dict, name: str) -> dict:
    return next(s for s in all_steps(definition["Steps"]) if s["Name"] == name)


def object_path(store: Path, uri: str) -> Path:
    assert uri.startswith("s3://"), uri
    return store / uri[len("s3://") :]


def repo_files(folder: str) -> dict[str, str]:
    """sha256 of every source file of a repository folder (no caches, no dot files)."""
    root = REPO_ROOT / folder
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(p == "__pycache__" or p.startswith(".") for p in relative.parts):
            continue
        if path.is_file() and path.suffix not in (".pyc", ".pyo"):
            files[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def tarball_files(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            member.name: hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            for member in tar.getmembers()
            if member.isfile()
        }


def processing_inputs(step_json: dict) -> dict[str, str]:
    inputs = step_json["Arguments"]["ProcessingInputs"]
    return {item["InputName"]: item["S3Input"]["S3Uri"] for item in inputs}


# --- shape -------------------------------------------------------------------------


def test_steps_are_preprocess_tune_train_evaluate_gate_register_or_fail(definition):
    top = [(s["Name"], s["Type"]) for s in definition["Steps"]]
    assert top == [
        ("Preprocess", "Processing"),
        ("Tune", "Tuning"),
        ("Train", "Training"),
        ("Evaluate", "Processing"),
        ("QualityGate", "Condition"),
    ]
    gate = step(definition, "QualityGate")["Arguments"]
    assert [(s["Name"], s["Type"]) for s in gate["IfSteps"]] == [("Register", "RegisterModel")]
    assert [(s["Name"], s["Type"]) for s in gate["ElseSteps"]] == [("QualityGateFailed", "Fail")]
    # No SDK-generated repack training job: the handler ships as SAGEMAKER_SUBMIT_DIRECTORY.
    types = sorted(s["Type"] for s in all_steps(definition["Steps"]))
    assert types == sorted(
        ["Processing", "Tuning", "Training", "Processing", "Condition", "RegisterModel", "Fail"]
    )


def test_tuning_selects_on_validation_average_precision_with_a_hyperparameter_tuner(definition):
    from pipelines.fraud.pipeline import DEFAULT_TUNING_MAX_JOBS, TUNING_OBJECTIVE, search_space

    tune = step(definition, "Tune")["Arguments"]
    config = tune["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": TUNING_OBJECTIVE}
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == DEFAULT_TUNING_MAX_JOBS
    assert config["ResourceLimits"]["MaxRuntimeInSeconds"] >= 120  # SageMaker's minimum
    ranges = config["ParameterRanges"]
    names = {r["Name"] for kind in ranges.values() for r in kind}
    assert names == set(search_space())
    job = tune["TrainingJobDefinition"]
    [metric] = job["AlgorithmSpecification"]["MetricDefinitions"]
    assert metric["Name"] == TUNING_OBJECTIVE
    # train.py prints the objective in the form the metric regex reads.
    import re

    assert re.search(metric["Regex"], "validation-average-precision: 0.4321").group(1) == "0.4321"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in job["InputDataConfig"]}
    assert channels == {
        "train": {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"},
        "validation": {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['validation']"
                              ".S3Output.S3Uri"},
    }


def test_train_refits_the_best_trial_on_train_and_validation(definition):
    from pipelines.fraud.pipeline import search_space

    train = step(definition, "Train")["Arguments"]
    hyper = train["HyperParameters"]
    assert hyper["refit"] == "true"
    for name in search_space():
        assert hyper[name] == {"Get": f"Steps.Tune.BestTrainingJob.TunedHyperParameters['{name}']"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in train["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "tuned"}
    tuned = channels["tuned"]["Std:Join"]["Values"]
    assert {"Get": "Steps.Tune.TrainingJobSummaries[0].TrainingJobName"} in tuned
    assert tuned[-1] == "output/model.tar.gz"


def test_the_tuning_budget_is_a_pipeline_argument():
    from pipelines.fraud.pipeline import TuningBudget

    with pytest.raises(ValueError, match="at least 1"):
        TuningBudget(max_jobs=0)


def test_the_executor_and_train_py_name_the_search_hyperparameter_alike():
    from pipelines.model.executor.tuning import SEARCH_HYPERPARAMETER

    search = REPO_ROOT / "training" / "search.py"
    assert script_constant(search, "SEARCH_HYPERPARAMETER") == SEARCH_HYPERPARAMETER


def test_register_is_pending_manual_approval_by_default(definition):
    params = {p["Name"]: p for p in definition["Parameters"]}
    assert params["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    register = step(definition, "Register")["Arguments"]
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["ModelPackageGroupName"] == "fraud-detection"
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == {
        "Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"
    }
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["S3Uri"]["Std:Join"]["Values"][-1] == "evaluation.json"


def test_parameters_and_defaults(definition):
    params = {p["Name"]: (p["Type"], p.get("DefaultValue")) for p in definition["Parameters"]}
    assert params == {
        "InputFeaturesUri": ("String", "s3://lake/features/transactions"),
        "TrainStartDate": ("String", ""),
        "TrainDays": ("String", ""),  # days (7, 7d) or hours (36h); empty: derive
        "LabelDelayDays": ("Integer", -1),  # the features' delay (their manifest)
        "ValidationDays": ("String", ""),
        "TestDays": ("String", ""),
        "ProcessingInstanceType": ("String", "ml.m5.xlarge"),
        "ProcessingInstanceCount": ("Integer", 1),
        "TrainingInstanceType": ("String", "ml.m5.xlarge"),
        "QualityThresholdAP": ("Float", 0.2),
        "AlertThreshold": ("Float", 0.5),
        "CardPrecisionK": ("Integer", 100),
        "ModelApprovalStatus": ("String", "PendingManualApproval"),
    }


def test_parameter_defaults_are_the_package_constants(definition):
    from pipelines.core.params import DEFAULT_ALERT_THRESHOLD, LABEL_DELAY_FROM_FEATURES

    params = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert params["AlertThreshold"] == DEFAULT_ALERT_THRESHOLD
    assert params["LabelDelayDays"] == LABEL_DELAY_FROM_FEATURES
    # The script cannot import the package; it must read the default as "the manifest's".
    preprocess = REPO_ROOT / "processing" / "preprocess.py"
    assert script_constant(preprocess, "LABEL_DELAY_FROM_FEATURES") == LABEL_DELAY_FROM_FEATURES


def test_the_model_package_carries_the_run_parameters_from_evaluation(definition):
    metadata = step(definition, "Register")["Arguments"]["CustomerMetadataProperties"]
    paths = {}
    for key, value in metadata.items():
        (get,) = value["Std:Join"]["Values"]
        assert get["Std:JsonGet"]["PropertyFile"] == {
            "Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}
        paths[key] = get["Std:JsonGet"]["Path"]
    assert paths == {"label_delay_days": "model.label_delay_days",
                     "feature_set_version": "model.feature_set_version",
                     "alert_threshold": "alert_threshold"}


def test_parameters_reach_the_container_arguments(definition):
    def container_arguments(name: str) -> list[str]:
        arguments = step(definition, name)["Arguments"]["AppSpecification"]["ContainerArguments"]
        return [a if isinstance(a, str) else json.dumps(a) for a in arguments]

    preprocess = container_arguments("Preprocess")
    for flag, parameter in [
        ("--train-start", "TrainStartDate"),
        ("--train-days", "TrainDays"),
        ("--label-delay-days", "LabelDelayDays"),
        ("--validation-days", "ValidationDays"),
        ("--test-days", "TestDays"),
    ]:
        assert f"Parameters.{parameter}" in preprocess[preprocess.index(flag) + 1]
    evaluate = container_arguments("Evaluate")
    assert "Parameters.AlertThreshold" in evaluate[evaluate.index("--alert-threshold") + 1]
    assert "Parameters.CardPrecisionK" in evaluate[evaluate.index("--k") + 1]
    inputs = processing_inputs(step(definition, "Preprocess"))
    assert inputs["features"] == {"Get": "Parameters.InputFeaturesUri"}


def test_quality_gate_reads_average_precision_and_fail_names_metric_and_threshold(definition):
    gate = step(definition, "QualityGate")["Arguments"]
    (condition,) = gate["Conditions"]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    json_get = condition["LeftValue"]["Std:JsonGet"]
    assert json_get["Path"] == QUALITY_METRIC_PATH == (
        "binary_classification_metrics.average_precision.value"
    )
    assert json_get["PropertyFile"] == {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}
    assert condition["RightValue"] == {"Get": "Parameters.QualityThresholdAP"}
    assert step(definition, "Evaluate")["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
         "FilePath": "evaluation.json"}
    ]  # fmt: skip
    message = step(definition, "QualityGateFailed")["Arguments"]["ErrorMessage"]["Std:Join"]
    values = message["Values"]
    assert {"Std:JsonGet": json_get} in values
    assert {"Get": "Parameters.QualityThresholdAP"} in values
    assert any("average precision" in v for v in values if isinstance(v, str))


def test_xgboost_container_version_matches_the_local_xgboost(definition):
    import xgboost

    images = {
        step(definition, "Preprocess")["Arguments"]["AppSpecification"]["ImageUri"],
        step(definition, "Train")["Arguments"]["AlgorithmSpecification"]["TrainingImage"],
        step(definition, "Register")["Arguments"]["InferenceSpecification"]["Containers"][0][
            "Image"
        ],
    }
    assert len(images) == 1
    (image,) = images
    assert image.endswith("/sagemaker-xgboost:3.2-0")
    # setup.py pins xgboost-cpu to the container's release: 3.2-0 ships xgboost 3.2.
    assert xgboost.__version__.startswith("3.2.")


# --- the code the definition ships --------------------------------------------------


def test_processing_steps_run_the_repository_processing_folder(definition, store):
    for name, script in (("Preprocess", "preprocess.py"), ("Evaluate", "evaluate.py")):
        inputs = processing_inputs(step(definition, name))
        tarball = object_path(store, inputs["code"]) / "sourcedir.tar.gz"
        assert tarball_files(tarball) == repo_files("processing")
        runproc = object_path(store, inputs["entrypoint"]).read_text()
        assert runproc.strip().splitlines()[-1] == f'python3 {script} "$@"'
        assert "tar -xzf sourcedir.tar.gz" in runproc


def test_training_runs_the_repository_training_folder_in_script_mode(definition, store):
    hyper = step(definition, "Train")["Arguments"]["HyperParameters"]
    assert hyper["sagemaker_program"] == "train.py"
    tarball = object_path(store, hyper["sagemaker_submit_directory"])
    files = tarball_files(tarball)
    assert files == repo_files("training")
    assert "train.py" in files


def test_register_serves_the_repository_inference_folder(definition, store):
    container = step(definition, "Register")["Arguments"]["InferenceSpecification"]["Containers"][0]
    env = container["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py"
    files = tarball_files(object_path(store, env["SAGEMAKER_SUBMIT_DIRECTORY"]))
    assert files == repo_files("inference")
    assert "inference.py" in files


def static_s3_uris(value) -> set[str]:
    """Every literal s3:// string of the definition (not the Join-built output paths)."""
    if isinstance(value, str):
        return {value} if value.startswith("s3://") else set()
    if isinstance(value, dict):
        if "Std:Join" in value:
            return set()
        return set().union(*(static_s3_uris(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(static_s3_uris(v) for v in value))
    return set()


def test_store_holds_exactly_the_code_the_definition_references(rendered, definition, store):
    referenced = static_s3_uris(definition["Steps"]) - {
        "s3://artifacts/fraud-detection/models"  # the training output prefix
    }
    stored = {f"s3://{p.relative_to(store).as_posix()}" for p in store.rglob("*") if p.is_file()}
    # Processing inputs name prefixes; everything stored sits under a referenced URI.
    for uri in stored:
        assert any(uri == ref or uri.startswith(ref.rstrip("/") + "/") for ref in referenced), uri
    for ref in referenced:
        assert any(uri == ref or uri.startswith(ref.rstrip("/") + "/") for uri in stored), ref
    assert set(rendered[0].code_objects) == stored
    folders = {uri.split("/")[5] for uri in stored if uri.endswith("sourcedir.tar.gz")}
    assert folders == set(CODE_FOLDERS)


def test_unknown_kwargs_are_rejected_with_the_accepted_names():
    with pytest.raises(ArgumentError, match="regin.*takes: region"):
        render_pipeline({"regin": "us-east-1"})


# --- reproducible packaging -----------------------------------------------------------


def test_pack_source_dir_depends_only_on_content(tmp_path):
    source = tmp_path / "code"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "main.py").write_text("print('hi')\n")
    (source / "pkg" / "util.py").write_text("X = 1\n")
    (source / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"junk")
    (source / ".hidden").write_text("secret")
    first = pack_source_dir(source)

    os.utime(source / "main.py", (1_000_000, 1_000_000))
    assert pack_source_dir(source) == first  # times do not matter

    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["main.py", "pkg/util.py"]
        assert {m.mtime for m in tar.getmembers()} == {0}

    (source / "main.py").write_text("print('changed')\n")
    assert pack_source_dir(source) != first  # content does


def test_pack_source_dir_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty" / "__pycache__").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no code"):
        pack_source_dir(tmp_path / "empty")


# --- command line ---------------------------------------------------------------------


def offline_env() -> dict[str, str]:
    """The environment with AWS credentials removed and every proxy pointing nowhere,
    so any attempt to reach the network fails instead of silently succeeding."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="")
    env["HOME"] = "/nonexistent"  # no ~/.aws/credentials either
    return env


def test_get_pipeline_definition_works_without_credentials_or_network(rendered, tmp_path):
    out = tmp_path / "out" / "pipeline.json"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.get_pipeline_definition",
         "--module-name", "pipelines.fraud.pipeline",
         "--kwargs", json.dumps(KWARGS), "--file-name", str(out)],
        cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Byte-identical to the in-process render: rendering is reproducible across
    # processes (same code, same keys), which SageMaker step caching relies on.
    assert out.read_text() == rendered[0].definition
    assert rendered[0].name == "fraud-detection"
    assert not list(out.parent.glob(".*.tmp"))


def test_get_pipeline_definition_reports_bad_kwargs(capsys):
    from pipelines.cli.get_pipeline_definition import main

    assert main(["--kwargs", "{region: us-east-1}"]) == 2
    assert "--kwargs is not valid JSON" in capsys.readouterr().err
    assert main(["--kwargs", '{"no_such_argument": 1}']) == 2
    assert "no_such_argument" in capsys.readouterr().err
    assert main(["--module-name", "pipelines.no_such_module"]) == 2
    assert "cannot be imported" in capsys.readouterr().err


def test_convert_struct_reads_json_and_python_literals():
    assert convert_struct(None) == {}
    assert convert_struct('{"a": true, "b": null}') == {"a": True, "b": None}
    assert convert_struct("{'a': True}") == {"a": True}  # the template's literal_eval form
    with pytest.raises(ArgumentError, match="--kwargs must be a JSON object"):
        convert_kwargs("[1, 2]")
    assert convert_tags('[{"Key": "team", "Value": "fraud"}]') == [
        {"Key": "team", "Value": "fraud"}
    ]
    with pytest.raises(ArgumentError, match="--tags must be a JSON list"):
        convert_tags('{"team": "fraud"}')


# --- run-pipeline --backend local ------------------------------------------------------


def test_a_pipeline_delay_other_than_the_features_fails_preprocess_naming_both(
    rendered, workspace
):
    """Features built with a 7-day delay, the pipeline asked for 3: refused, not overridden."""
    from pipelines.data.features.store import write_manifest
    from pipelines.fraud.pipeline import default_input_features_uri
    from pipelines.model.executor import run_pipeline_definition

    shutil.copytree(rendered[2], workspace.object_store, dirs_exist_ok=True)
    features = workspace.local_path(default_input_features_uri("lake"))
    features.mkdir(parents=True)
    write_manifest(features, 7)  # what `fraudops features --label-delay-days 7` writes
    execution = run_pipeline_definition(
        rendered[0].definition, workspace, {"LabelDelayDays": 3}, "analyst-1",
        "fraud-detection", progress=False,
    )  # fmt: skip
    assert execution.status == "Failed"
    assert execution.step("Preprocess").status == "Failed"
    reason = " ".join(execution.failure_reason.split())
    assert "asked for a label delay of 3 days" in reason
    assert "were built with 7 days" in reason
    assert "fraudops features --label-delay-days 3" in reason


def test_run_pipeline_local_stages_code_in_the_workspace_and_calls_the_executor(
    rendered, workspace, monkeypatch, capsys, os_account
):
    import pipelines.fraud.local_run
    from pipelines.cli.run_pipeline import main
    from pipelines.model.executor import ExecutionSummary, StepSummary

    calls = []

    def fake_executor(definition, ws, parameters, started_by, pipeline_name, progress):
        calls.append((definition, ws, parameters, started_by, pipeline_name))
        step_summary = StepSummary("Preprocess", "Processing", "Failed", 1, False,
                                   "no features", None, {}, {})  # fmt: skip
        return ExecutionSummary("e1", "arn:e1", pipeline_name, "Failed", "no features",
                                "t0", "t1", [step_summary])  # fmt: skip

    monkeypatch.setattr(pipelines.fraud.local_run, "run_pipeline_definition", fake_executor)
    os_account("analyst-1")
    monkeypatch.setenv("FRAUDOPS_USER", "nightly")  # a display name: never the starter
    code = main(["--workdir", str(workspace.root), "--kwargs", json.dumps(KWARGS),
                 "--pipeline-parameters", '{"QualityThresholdAP": 0.2}'])  # fmt: skip

    assert code == 1  # the execution failed
    ((definition, ws, parameters, started_by, name),) = calls
    assert definition == rendered[0].definition
    assert ws.root == workspace.root
    assert parameters == {"QualityThresholdAP": 0.2}
    assert (started_by, name) == ("analyst-1", "fraud-detection")
    staged = {p.relative_to(workspace.object_store) for p in workspace.object_store.rglob("*")}
    expected = {p.relative_to(rendered[2]) for p in rendered[2].rglob("*")}
    assert staged == expected
    out = capsys.readouterr().out
    assert "step Preprocess: Failed (no features)" in out
    assert "Execution e1 Failed: no features" in out


def test_cached_render_returns_the_identical_definition_without_the_sdk(
    rendered, tmp_path, monkeypatch
):
    import pipelines.fraud.definition as definition_module

    result, _, store = rendered
    cache = tmp_path / "cache"
    calls = []

    def counting_render(*args, **kwargs):
        calls.append(kwargs)
        return result

    monkeypatch.setattr(definition_module, "render_pipeline", counting_render)
    first = definition_module.render_pipeline_cached(KWARGS, code_store_dir=store, cache_dir=cache)
    again = definition_module.render_pipeline_cached(KWARGS, code_store_dir=store, cache_dir=cache)
    assert first.definition == again.definition == result.definition
    assert len(calls) == 1, "the second render came from the cache"

    other = definition_module.render_pipeline_cached(
        {**KWARGS, "pipeline_name": "other"}, code_store_dir=store, cache_dir=cache)
    assert len(calls) == 2 and other is result, "other kwargs miss the cache"

    missing_code = tmp_path / "empty-store"
    definition_module.render_pipeline_cached(KWARGS, code_store_dir=missing_code, cache_dir=cache)
    assert len(calls) == 3, "a cache entry whose staged code is gone is re-rendered"


def test_a_render_in_the_background_is_the_one_the_foreground_gets(
    rendered, tmp_path, monkeypatch
):
    """`fraudops run` renders while its data steps run; the pipeline step waits for that
    render (the entry's lock) and reuses it instead of rendering again."""
    import fcntl
    import time

    import pipelines.fraud.definition as definition_module

    result, _, _ = rendered
    store, cache = tmp_path / "store", tmp_path / "cache"

    def no_second_render(*args, **kwargs):
        raise AssertionError("the foreground rendered although a background render was running")

    with definition_module.render_in_background(KWARGS, code_store_dir=store, cache_dir=cache):
        deadline = time.monotonic() + 60
        while not list(cache.glob("*.json")):  # wait until the background process holds the lock
            locks = list(cache.glob("*.lock"))
            if locks:
                with open(locks[0]) as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(handle, fcntl.LOCK_UN)
                    except BlockingIOError:
                        break
            assert time.monotonic() < deadline, "the background render never started"
            time.sleep(0.02)
        monkeypatch.setattr(definition_module, "render_pipeline", no_second_render)
        got = definition_module.render_pipeline_cached(KWARGS, code_store_dir=store,
                                                       cache_dir=cache)
    assert got.definition == result.definition
    assert got.code_objects and all(
        (store / uri.removeprefix("s3://")).is_file() for uri in got.code_objects)


def test_leaving_the_block_early_stops_the_background_render(tmp_path):
    import pipelines.fraud.definition as definition_module

    with definition_module.render_in_background(KWARGS, code_store_dir=tmp_path / "store",
                                                cache_dir=tmp_path / "cache"):
        pass  # e.g. ingest failed at once: the run ends without waiting for the render
    assert not list((tmp_path / "cache").glob("*.json"))


def test_fingerprint_changes_with_the_shipped_code(monkeypatch, tmp_path):
    import pipelines.fraud.definition as definition_module

    for folder in definition_module.RENDER_INPUTS:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.py").write_text("a = 1\n")
    monkeypatch.setattr(definition_module, "unit_dir", lambda unit: tmp_path / unit)
    before = definition_module.render_fingerprint(KWARGS)
    (tmp_path / "training" / "x.py").write_text("a = 2\n")
    assert definition_module.render_fingerprint(KWARGS) != before
