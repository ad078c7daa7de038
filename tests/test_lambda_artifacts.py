"""The built artifacts are what the stacks reference, reproducible, and each Lambda
handler runs from them alone.

The Lambda test unpacks ``lambda.zip`` and the function's layers, adds only what
the Lambda Python runtime ships (boto3 and its dependencies), and runs each
handler's happy path in a fresh ``python -I -S`` (no site-packages, no
PYTHONPATH) against a moto server on 127.0.0.1. The layers are built from this
interpreter's installed packages (``InstalledSource``): no network. The pip path
that builds the real manylinux layers is checked against a local wheel folder.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode

from pipelines.core.params import ModelParameters
from pipelines.data.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION
from pipelines.workflow import artifacts as build
from pipelines.workflow.artifacts import (
    FUNCTION_LAYERS,
    LAYERS,
    RUNTIME_PROVIDED,
    BuildError,
    InstalledSource,
    PipSource,
    build_artifacts,
    copy_installed,
)
from pipelines.workflow.declaration import FRAUD_WORKFLOW
from pipelines.workflow.render import to_state_machine

ROOT = Path(__file__).resolve().parent.parent
REGION, ACCOUNT = "us-east-1", "123456789012"
DRIVER = """
import importlib, json, sys
paths = json.loads(sys.argv[1])
sys.path[:0] = paths
module = importlib.import_module(sys.argv[2])
result = module.handler(json.loads(sys.stdin.read()), None)
stdlib = sys.base_prefix
outside = sorted(
    name for name, m in list(sys.modules.items())
    if getattr(m, "__file__", None)
    and not any(m.__file__.startswith(p) for p in paths)
    and not m.__file__.startswith(stdlib)
)
print("RESULT " + json.dumps({"result": result, "outside": outside}, default=str))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("artifacts"), InstalledSource())


@pytest.fixture(scope="module")
def unpacked(built, tmp_path_factory) -> dict[str, Path]:
    """Each archive unpacked in its own folder, plus the runtime's own packages."""
    root = tmp_path_factory.mktemp("unpacked")
    folders = {}
    for key in [build.BUNDLE, *(layer.key for layer in LAYERS)]:
        folder = root / Path(key).stem
        with zipfile.ZipFile(built[key]) as archive:
            archive.extractall(folder)
        folders[key] = folder
    copy_installed(RUNTIME_PROVIDED, root / "runtime")
    folders["runtime"] = root / "runtime"
    return folders


def _template(name: str) -> dict[str, Any]:
    parsed, matches = decode(str(ROOT / "infra" / name))
    assert not matches
    return parsed


def _referenced_keys() -> set[str]:
    """Every ``code/${CodeVersion}/<key>`` a template or the state machine names."""
    texts = [path.read_text() for path in sorted((ROOT / "infra").glob("*.yaml"))]
    texts.append(json.dumps(to_state_machine(FRAUD_WORKFLOW)))
    return {key for text in texts
            for key in re.findall(r"code/\$\{CodeVersion\}/([\w./-]+\w)", text)}


# --- what is built ---------------------------------------------------------------------------


def test_every_artifact_a_stack_references_is_built(built):
    referenced = _referenced_keys()
    assert {"lambda.zip", "workflow.asl.json", "fraudops_glue.zip", "source.zip",
            "fraudops_features.zip", "companions/emr/feature_job.py"} <= referenced
    assert referenced <= set(built), f"not built: {referenced - set(built)}"
    for key in referenced:
        assert built[key].stat().st_size > 0, key


def test_the_build_is_reproducible(built, tmp_path):
    # Sources are rebuilt back to back (a shared checkout may change between a build and
    # the module's fixture); layers depend only on the installed packages.
    first, second = tmp_path / "1", tmp_path / "2"
    for builder in (build.build_lambda_bundle, build.build_glue_archive,
                    build.build_source_archive, build.build_state_machine):
        assert builder(first).read_bytes() == builder(second).read_bytes(), builder.__name__
    for layer in LAYERS:
        rebuilt = build.build_layer(layer, first, InstalledSource())
        assert rebuilt.read_bytes() == built[layer.key].read_bytes(), layer.key


def test_each_function_lists_the_layers_its_handler_needs_and_fits_lambdas_limit(built):
    resources = _template("ml.yaml")["Resources"]
    layer_keys = {
        name: r["Properties"]["Content"]["S3Key"]["Fn::Sub"].split("/", 2)[2]
        for name, r in resources.items() if r["Type"] == "AWS::Lambda::LayerVersion"
    }
    assert sorted(layer_keys.values()) == sorted(layer.key for layer in LAYERS)
    for function in (r["Properties"] for r in resources.values()
                     if r["Type"] == "AWS::Lambda::Function"):
        handler = function["Handler"].rsplit(".", 1)[0].replace("/", ".")
        listed = [layer_keys[ref["Ref"]] for ref in function.get("Layers", [])]
        wanted = [f"layers/{name}.zip" for name in FUNCTION_LAYERS[handler]]
        assert listed == wanted, handler
        assert function["Runtime"] == build.LAMBDA_RUNTIME
    manifest = json.loads(built[build.MANIFEST].read_text())
    for function in manifest["functions"]:
        assert function["unzipped_bytes"] <= build.LAMBDA_UNZIPPED_LIMIT, function
        print(f"{function['handler']}: {function['unzipped_bytes'] / 1e6:.1f} MB of "
              f"{build.LAMBDA_UNZIPPED_LIMIT / 1e6:.1f} MB")
    for layer in resources.values():
        if layer["Type"] == "AWS::Lambda::LayerVersion":
            assert layer["Properties"]["CompatibleRuntimes"] == [build.LAMBDA_RUNTIME]


def test_the_glue_job_gets_the_archive_and_the_pinned_module_list(built):
    job = _template("catalog.yaml")["Resources"]["TransactionsEtlJob"]["Properties"]
    arguments = job["DefaultArguments"]
    assert arguments["--extra-py-files"]["Fn::Sub"][0].endswith(f"/{build.GLUE_ARCHIVE}")
    assert arguments["--additional-python-modules"] == build.glue_python_modules()
    with zipfile.ZipFile(built[build.GLUE_ARCHIVE]) as archive:
        names = set(archive.namelist())
    assert {"pipelines/data/ingest/run.py", "pipelines/core/schema.py"} <= names
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)


def test_codebuilds_source_installs_and_holds_the_buildspec(built):
    with zipfile.ZipFile(built[build.SOURCE_ARCHIVE]) as archive:
        names = set(archive.namelist())
    assert {"setup.py", "codebuild-buildspec.yml", "README.md", "inference/inference.py",
            "pipelines/fraud/pipeline.py", "training/train.py", "infra/ml.yaml"} <= names
    assert not any("_bundled" in n or "__pycache__" in n for n in names)


def test_deploy_refuses_layers_built_for_another_python(built):
    with pytest.raises(BuildError, match="rebuild with `fraudops infra build`"):
        build.deployable(built[build.MANIFEST].parent)


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, as a package index would serve it."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 .encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist_info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for n, body in files.items():
            archive.writestr(n, body)
        archive.writestr(f"{dist_info}/RECORD", record)
    return path


def test_the_pip_source_fetches_for_the_lambda_platform_from_a_wheel_folder(tmp_path,
                                                                           monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "tinydep", "1.0")
    monkeypatch.setattr(build, "_version", lambda name: "1.0")
    layer = build.Layer("tiny", ("tinydep",))
    zipped = build.build_layer(layer, tmp_path / "out", PipSource(find_links=wheels))
    names = zipfile.ZipFile(zipped).namelist()
    assert "python/tinydep/__init__.py" in names
    assert not any(n.endswith("direct_url.json") for n in names)  # no build-machine paths
    monkeypatch.setattr(build, "_version", lambda name: "2.0")
    with pytest.raises(BuildError, match=r"tinydep==2\.0 for Python 3\.12"):
        build.build_layer(layer, tmp_path / "out", PipSource(find_links=wheels))


# --- each handler, run from the artifacts alone ----------------------------------------------


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # Lambda Invoke without Docker: moto records the call instead of running it.
    _moto_api(url, "config", {"lambda": {"use_docker": False}})
    yield url
    server.stop()


def _moto_api(url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(f"{url}/moto-api/{path}", json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()  # noqa: S310 - loopback moto server


@pytest.fixture
def aws_env(moto_server, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    _moto_api(moto_server, "reset", {})
    _moto_api(moto_server, "config", {"lambda": {"use_docker": False}})
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_server,
            "AWS_LAMBDA_FUNCTION_NAME": "under-test", "PATH": "/usr/bin:/bin"}


def run_handler(unpacked: dict[str, Path], handler: str, event: dict, env: dict[str, str]):
    """Run ``handler`` in a clean interpreter with only its bundle, layers and boto3."""
    paths = [unpacked[build.BUNDLE], *(unpacked[f"layers/{name}.zip"] / "python"
                                       for name in FUNCTION_LAYERS[handler]),
             unpacked["runtime"]]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", DRIVER, json.dumps([str(p) for p in paths]), handler],
        input=json.dumps(event), capture_output=True, text=True, env=env, timeout=300,
        cwd=unpacked["runtime"].parent, check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, f"{handler} failed:\n{result.stderr[-3000:]}"
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    assert outcome["outside"] == [], f"{handler} imported from outside its artifacts"
    return outcome["result"]


def _topic_to_queue(sns, sqs, name: str) -> tuple[str, str]:
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{name}-read")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


def _state_table(name: str) -> None:
    boto3.client("dynamodb").create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "entity", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "entity", "KeyType": "HASH"}],
    )


def test_failure_notification_runs_from_the_artifacts(unpacked, aws_env):
    topic, queue = _topic_to_queue(boto3.client("sns"), boto3.client("sqs"), "failures")
    event = {"source": "fraudops.workflow", "detail-type": "Workflow Step Failed",
             "detail": {"workflow": "wf", "execution": "exec-1", "step": "ingest",
                        "error": "boom", "rollback": "none", "log": "history"}}
    sent = run_handler(unpacked, "lambdas.failure_notification.handler", event,
                       {**aws_env, "FAILURES_TOPIC_ARN": topic})
    assert sent["step"] == "ingest"
    (message,) = boto3.client("sqs").receive_message(QueueUrl=queue)["Messages"]
    assert json.loads(json.loads(message["Body"])["Message"])["error"] == "boom"


def test_alert_handler_runs_from_the_artifacts_and_writes_the_lake_row(unpacked, aws_env):
    topic, queue = _topic_to_queue(boto3.client("sns"), boto3.client("sqs"), "alerts")
    _state_table("state")
    boto3.client("s3").create_bucket(Bucket="lake")
    row = {"transaction_id": "tx-1", "card_id": "card-1", "customer_id": "c1",
           "terminal_id": "t1", "timestamp": "2026-03-01T10:00:00+00:00", "amount": 120.0,
           "score": 0.93, "model_version": 3, "reasons": []}
    event = {"scored": [row], "alert_threshold": 0.5, "model_package_arn": "arn:pkg/3"}
    env = {**aws_env, "STATE_TABLE": "state", "ALERTS_TOPIC_ARN": topic, "LAKE_BUCKET": "lake"}
    counts = run_handler(unpacked, "lambdas.alert.handler", event, env)
    assert counts["written"] == 1
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lake")["Contents"]]
    assert len(keys) == 2 and keys[0].startswith("alerts/dt=2026-03-01/")
    assert keys[1].startswith("cases/case-") and counts["cases_opened"] == 1
    assert boto3.client("sqs").receive_message(QueueUrl=queue).get("Messages")


def _served_package(sm, endpoint: str, parameters: ModelParameters) -> str:
    from pipelines.serving.deploy.sample_model import create_request

    sm.create_model_package_group(ModelPackageGroupName="fraud-detection")
    request = create_request("fraud-detection", "s3://artifacts/models/1/model.tar.gz",
                             parameters=parameters)
    arn = sm.create_model_package(**request)["ModelPackageArn"]
    sm.create_model(ModelName="fraudops-dev-fraud-v1", PrimaryContainer={"ModelPackageName": arn},
                    ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sagemaker")
    sm.create_endpoint_config(EndpointConfigName="fraudops-dev-fraud-v1", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "fraudops-dev-fraud-v1",
         "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName="fraudops-dev-fraud-v1")
    return arn


def _alert_function(name: str) -> None:
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="alert", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]
    }))["Role"]["Arn"]
    code = _zip_bytes({"handler.py": b"def handler(event, context):\n    return event\n"})
    boto3.client("lambda").create_function(FunctionName=name, Runtime=build.LAMBDA_RUNTIME,
                                           Role=role, Handler="handler.handler",
                                           Code={"ZipFile": code})


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in files.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def test_stream_handler_runs_from_the_artifacts(unpacked, aws_env, moto_server):
    from pipelines.data.datagen import GeneratorConfig, generate_transactions

    sm = boto3.client("sagemaker")
    parameters = ModelParameters(label_delay_days=7, feature_set_version=FEATURE_SET_VERSION,
                                 alert_threshold=0.5)
    _served_package(sm, "fraudops-dev-fraud", parameters)
    _state_table("online")
    queue = boto3.client("sqs").create_queue(QueueName="dead-letters")["QueueUrl"]
    secret = boto3.client("secretsmanager").create_secret(Name="key", SecretString="k" * 64)
    boto3.client("s3").create_bucket(Bucket="lake")
    _alert_function("alert-fn")
    rows = generate_transactions(GeneratorConfig(transactions=50, days=1, customers=3, seed=4))
    records = []
    for i, row in enumerate(rows.slice(0, 4).to_pylist()):
        row["timestamp"] = row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")
        data = base64.b64encode(json.dumps(row).encode()).decode()
        records.append({"eventID": f"shardId-000000000000:{i}", "eventSource": "aws:kinesis",
                        "kinesis": {"data": data, "sequenceNumber": str(i), "partitionKey": "k"}})
    scores = [0.1, 0.97, 0.2, 0.3]
    top = [{"feature": "amount", "value": 950.0, "contribution": 1.2}]
    _moto_api(moto_server, "static/sagemaker/endpoint-results", {"results": [
        {"Body": json.dumps({"predictions": [{"score": s} for s in scores]}),
         "ContentType": "application/json"},
        # the alerted row's contributions (inference.py's "explain"), for its reasons
        {"Body": json.dumps({"predictions": [{"score": 0.97, "bias": -2.0, "top": top}]}),
         "ContentType": "application/json"}], "region": REGION})
    env = {**aws_env, "ENDPOINT_NAME": "fraudops-dev-fraud", "STATE_TABLE": "online",
           "ALERT_FUNCTION": "alert-fn", "DEAD_LETTER_QUEUE_URL": queue,
           "TOKEN_KEY_SECRET": secret["ARN"], "SCORED_BUCKET": "lake"}
    result = run_handler(unpacked, "lambdas.stream_scoring.handler", {"Records": records}, env)
    assert result == {"batchItemFailures": []}
    items = boto3.client("dynamodb").scan(TableName="online")["Items"]
    assert sum(i["entity"]["S"].startswith("processed#") for i in items) == 4
    scored = boto3.client("s3").list_objects_v2(Bucket="lake", Prefix="scored/")["Contents"]
    assert scored and all(o["Key"].endswith(".parquet") for o in scored)
    assert len(FEATURE_COLUMNS) > 0


def test_deploy_handler_runs_from_the_artifacts(unpacked, aws_env, sagemaker_decision):
    from pipelines.core.events import MODEL_PACKAGE_STATE_CHANGE
    from pipelines.serving.deploy.sample_model import create_request

    sm = boto3.client("sagemaker")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="artifacts")
    s3.put_object(Bucket="artifacts", Key="evaluation/run-1/evaluation.json",
                  Body=json.dumps({"average_precision": 0.8, "passed": True}).encode())
    sm.create_model_package_group(ModelPackageGroupName="fraud-detection")
    request = create_request("fraud-detection", "s3://artifacts/models/run-1/model.tar.gz",
                             evaluation_uri="s3://artifacts/evaluation/run-1/evaluation.json")
    arn = sm.create_model_package(**request)["ModelPackageArn"]
    sagemaker_decision(sm, arn, "Approved")  # by a second person (four-eyes)
    topic = boto3.client("sns").create_topic(Name="failures")["TopicArn"]
    event = {"version": "0", "id": "e1", "source": "aws.sagemaker", "account": ACCOUNT,
             "detail-type": MODEL_PACKAGE_STATE_CHANGE, "region": REGION, "resources": [arn],
             "detail": {"ModelPackageGroupName": "fraud-detection", "ModelPackageArn": arn,
                        "ModelApprovalStatus": "Approved"}}
    env = {**aws_env, "FRAUDOPS_BACKEND": "aws", "ENDPOINT_NAME": "fraudops-dev-fraud",
           "EXECUTION_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/sagemaker",
           "FAILURES_TOPIC_ARN": topic, "DEPLOY_STAGE": "dev", "PROMOTION_BUCKET": "artifacts",
           "PROMOTION_KEY": "promotion/request.zip"}
    result = run_handler(unpacked, "lambdas.deploy.handler", event, env)
    assert result["model_package_arn"] == arn, result
    assert sm.describe_endpoint(EndpointName="fraudops-dev-fraud")["EndpointConfigName"]


# --- the Glue job, from its archive and module list alone -------------------------------------

GLUE_DRIVER = """
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
from companions.glue import transactions_etl
sys.exit(transactions_etl.main(sys.argv[2:]))
"""


def test_the_glue_job_runs_from_its_archive_and_module_list(built, aws_env, tmp_path):
    """What Glue 5.0 has: the script, --extra-py-files and --additional-python-modules
    (pip installs their dependencies too), and boto3."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    unpacked = tmp_path / "glue"
    modules = list(build.GLUE_PYTHON_MODULES)
    needed = [Requirement(r) for name in modules for r in (requires(name) or [])]
    dependencies = [r.name for r in needed if r.marker is None or r.marker.evaluate({"extra": ""})]
    copy_installed(sorted(set(modules + dependencies) - set(RUNTIME_PROVIDED)), unpacked / "mods")
    copy_installed(RUNTIME_PROVIDED, unpacked / "runtime")
    s3 = boto3.client("s3")
    for bucket in ("landing", "lake"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="landing", Key="transactions/day.csv", Body=(
        b"transaction_id,timestamp,customer_id,terminal_id,amount,is_fraud\n"
        b"t1,2026-03-01T10:00:00Z,c1,T1,12.50,0\nt2,2026-03-01T11:00:00Z,c2,T2,-3,0\n"))
    boto3.client("secretsmanager").create_secret(Name="key", SecretString="k" * 64)
    paths = [str(built[build.GLUE_ARCHIVE]), str(unpacked / "mods"), str(unpacked / "runtime")]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", GLUE_DRIVER, json.dumps(paths), "--JOB_NAME", "etl",
         "--landing_uri", "s3://landing/transactions/", "--lake_uri", "s3://lake/",
         "--token_key_secret", "key", "--endpoint_url", aws_env["AWS_ENDPOINT_URL"],
         "--region", REGION],
        capture_output=True, text=True, env=aws_env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[0])
    assert (report["rows_curated"], report["rows_quarantined"]) == (1, 1)
