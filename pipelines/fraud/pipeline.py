"""The fraud-detection SageMaker Pipeline (SageMaker Python SDK v3).

Shaped like the SageMaker MLOps project template's ``pipelines/abalone/pipeline.py``::

                                                      . -> Register (PendingManualApproval)
    Preprocess -> Tune -> Train -> Evaluate -> QualityGate  .
                                                      . -> Fail (AP below the threshold)

* Preprocess: ``processing/preprocess.py``, chronological split with a label delay.
* Tune: model selection on the validation window, a TuningStep whose
  HyperparameterTuner runs ``training/train.py`` over ``SEARCH_SPACE``, maximising
  validation average precision (the metric the gate uses), at most
  ``TuningMaxJobs`` trials in ``TuningMaxSeconds``. The local executor interprets
  it with a successive-halving search in one training process (trial 1: the
  defaults), see ``pipelines.model.executor.tuning``.
* Train: the refit. SageMaker XGBoost framework container in script mode,
  ``training/train.py --refit true``: the best trial's hyperparameters
  (``BestTrainingJob.TunedHyperParameters``) and number of rounds (its model's
  training_metadata.json), fitted on train + validation before the test window.
* Evaluate: ``processing/evaluate.py``, writes ``evaluation.json`` (PropertyFile
  ``EvaluationReport``) and the per-transaction test scores.
* QualityGate: average precision >= ``QualityThresholdAP``.
* Register: a model package whose container runs ``inference/inference.py``.

Code ships as the repository's ``processing/``, ``training/`` and ``inference/``
folders. Each folder is packed into a byte-for-byte reproducible
``sourcedir.tar.gz`` stored under a key derived from its content hash, so the
same code always yields the same definition (and SageMaker step caching hits)
and the definition names exactly the files that run locally.

``get_pipeline`` needs a region and a default bucket; it uploads the code
tarballs through the session's S3 client. ``pipelines.fraud.definition`` runs
it under moto to render the definition with no credentials and no network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.code import unit_dir
from pipelines.core.params import DEFAULT_ALERT_THRESHOLD, LABEL_DELAY_FROM_FEATURES
from pipelines.core.workspace import LAKE_BUCKET

if TYPE_CHECKING:  # the SDK import is slow and needs AWS_DEFAULT_REGION first
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.pipeline import Pipeline


# Newest SageMaker XGBoost container the SDK's image list names (image_uri_config/
# xgboost.json); setup.py pins xgboost-cpu to the same release so a model trained
# locally is the model the endpoint container loads.
XGBOOST_FRAMEWORK_VERSION = "3.2-0"

# The gate reads this metric from evaluation.json (docs/CONTRACTS.md).
QUALITY_METRIC_PATH = "binary_classification_metrics.average_precision.value"
EVALUATION_REPORT = "EvaluationReport"
# Model selection: the objective is the metric the gate uses, measured on the
# validation window; train.py prints it as ``validation-average-precision: 0.123``.
TUNING_OBJECTIVE = "validation:average_precision"
TUNING_METRIC_DEFINITIONS = [
    {"Name": TUNING_OBJECTIVE, "Regex": r"validation-average-precision: ([0-9.eE+-]+)"},
]
DEFAULT_TUNING_MAX_JOBS = 9  # the defaults and 8 candidates
DEFAULT_TUNING_MAX_SECONDS = 120  # SageMaker's minimum MaxRuntimeInSeconds
EVALUATION_FILE = "evaluation.json"
# Where in evaluation.json the Register step finds each run parameter the model
# package carries (pipelines.core.params.ModelParameters, CustomerMetadataProperties).
MODEL_PARAMETER_PATHS = {
    "label_delay_days": "model.label_delay_days",
    "feature_set_version": "model.feature_set_version",
    "alert_threshold": "alert_threshold",
}

# SageMaker Processing and Training container layout.
PROCESSING_ROOT = "/opt/ml/processing"

# Files that are build by-products, never code to ship.
_IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".DS_Store"}
_IGNORED_SUFFIXES = (".pyc", ".pyo")

# Telemetry runs on a background thread that calls AWS; opt out so rendering
# stays offline and quiet.
SDK_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


# --- reproducible code packaging ---------------------------------------------


def _shipped_files(source_dir: Path) -> list[Path]:
    """Every file of ``source_dir`` to ship, sorted, skipping caches and hidden files."""
    files = []
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if any(part in _IGNORED_NAMES or part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and not path.name.endswith(_IGNORED_SUFFIXES):
            files.append(path)
    return files


def pack_source_dir(source_dir: Path) -> bytes:
    """A ``sourcedir.tar.gz`` of ``source_dir`` whose bytes depend only on file content.

    Sorted members, zeroed times and owners, and a gzip header without a
    timestamp: the same code always gives the same bytes, hence the same key.
    """
    source_dir = Path(source_dir)
    files = _shipped_files(source_dir)
    if not files:
        raise FileNotFoundError(
            f"{source_dir} holds no code to ship; the pipeline runs the scripts in this folder."
        )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(source_dir).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as archive:
        archive.write(raw.getvalue())
    return packed.getvalue()


@dataclass(frozen=True)
class StagedCode:
    """A source folder uploaded as ``sourcedir.tar.gz``."""

    local_dir: Path
    s3_uri: str
    sha256: str


def stage_source_dir(
    session: PipelineSession, source_dir: Path, bucket: str, pipeline_name: str
) -> StagedCode:
    """Upload ``source_dir`` as ``s3://bucket/<pipeline>/code/<folder>/<sha256>/sourcedir.tar.gz``."""
    body = pack_source_dir(source_dir)
    digest = hashlib.sha256(body).hexdigest()
    key = f"{pipeline_name}/code/{Path(source_dir).name}/{digest}/sourcedir.tar.gz"
    session.boto_session.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    return StagedCode(Path(source_dir), f"s3://{bucket}/{key}", digest)


# --- session -------------------------------------------------------------------


@contextmanager
def config_validation_cache() -> Iterator[None]:
    """Validate each distinct SDK defaults config once while building a pipeline.

    SDK 3.27 re-checks its config against a large JSON schema on every lookup
    (about 1 s each, some 50 lookups per definition), which would make a render
    take a minute. Same validation, done once per config; restored on exit.
    """
    from sagemaker.core.config.config_manager import SageMakerConfig

    original = SageMakerConfig.__dict__["validate_sagemaker_config"]
    validated: set[str] = set()

    def validate_once(sagemaker_config: dict | None = None) -> None:
        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in validated:
            original.__func__(sagemaker_config)
            validated.add(key)

    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_once)
    try:
        yield
    finally:
        SageMakerConfig.validate_sagemaker_config = original


def _ensure_region(region: str) -> None:
    """The SDK resolves its region at import time: set it before the first import."""
    if not region:
        raise ValueError("a region is required, e.g. us-east-1")
    os.environ.setdefault("AWS_DEFAULT_REGION", region)


def get_session(region: str, default_bucket: str | None) -> PipelineSession:
    """A PipelineSession for ``region`` with telemetry off (template: get_pipeline_session)."""
    _ensure_region(region)
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    boto_session = boto3.Session(region_name=region)
    return PipelineSession(
        boto_session=boto_session,
        sagemaker_client=boto_session.client("sagemaker"),
        default_bucket=default_bucket,
        sagemaker_config=SDK_CONFIG,
    )


def xgboost_image_uri(region: str, scope: str) -> str:
    """The SageMaker XGBoost framework image (``training`` or ``inference``)."""
    from sagemaker.core import image_uris

    return image_uris.retrieve(
        framework="xgboost", region=region, version=XGBOOST_FRAMEWORK_VERSION, image_scope=scope
    )


# --- parameters ----------------------------------------------------------------


@dataclass(frozen=True)
class FraudParameters:
    """The pipeline's execution parameters; each can be overridden per execution."""

    input_features_uri: Any
    train_start_date: Any
    train_days: Any
    label_delay_days: Any
    validation_days: Any
    test_days: Any
    processing_instance_type: Any
    processing_instance_count: Any
    training_instance_type: Any
    quality_threshold_ap: Any
    alert_threshold: Any
    card_precision_k: Any
    model_approval_status: Any

    def as_list(self) -> list:
        """In declaration order, for ``Pipeline(parameters=...)``."""
        return [getattr(self, f.name) for f in fields(self)]


DEFAULT_QUALITY_THRESHOLD_AP = 0.2


def build_parameters(input_features_uri: str) -> FraudParameters:
    """Declare the parameters.

    Empty TrainStartDate and empty (or 0) TrainDays/ValidationDays/TestDays
    mean "derive from the data" (preprocess.py: first day; 7-day windows shrunk
    on short histories, a chronological 60/20/20 split by transactions on very short ones), per
    docs/CONTRACTS.md. The windows take whole days (``7``, ``7d``) or hours
    (``36h``), hence strings. LabelDelayDays -1 means "the delay
    the features were built with" (their ``_feature_set.json``); any other value
    must equal it, or Preprocess fails naming both.
    """
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )

    return FraudParameters(
        input_features_uri=ParameterString("InputFeaturesUri", default_value=input_features_uri),
        train_start_date=ParameterString("TrainStartDate", default_value=""),
        train_days=ParameterString("TrainDays", default_value=""),
        label_delay_days=ParameterInteger(
            "LabelDelayDays", default_value=LABEL_DELAY_FROM_FEATURES
        ),
        validation_days=ParameterString("ValidationDays", default_value=""),
        test_days=ParameterString("TestDays", default_value=""),
        processing_instance_type=ParameterString(
            "ProcessingInstanceType", default_value="ml.m5.xlarge"
        ),
        processing_instance_count=ParameterInteger("ProcessingInstanceCount", default_value=1),
        training_instance_type=ParameterString(
            "TrainingInstanceType", default_value="ml.m5.xlarge"
        ),
        # Fraud is ~1% of transactions, so a random ranking scores AP ~0.01; 0.2
        # rejects models with little skill without failing honest models on
        # harder portfolios. Tighten it per portfolio once a champion exists.
        quality_threshold_ap=ParameterFloat(
            "QualityThresholdAP", default_value=DEFAULT_QUALITY_THRESHOLD_AP
        ),
        alert_threshold=ParameterFloat("AlertThreshold", default_value=DEFAULT_ALERT_THRESHOLD),
        card_precision_k=ParameterInteger("CardPrecisionK", default_value=100),
        model_approval_status=ParameterString(
            "ModelApprovalStatus", default_value="PendingManualApproval"
        ),
    )


# --- steps ---------------------------------------------------------------------


def _execution_uri(bucket: str, pipeline_name: str, *parts: str):
    """``s3://bucket/<pipeline>/<execution id>/<parts>``: each execution writes apart."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join

    return Join(
        on="/",
        values=["s3:/", bucket, pipeline_name, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts],
    )


def _s3_input(name: str, source, local_path: str):
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name=name,
        s3_input=ProcessingS3Input(
            s3_uri=source,
            local_path=local_path,
            s3_data_type="S3Prefix",
            s3_input_mode="File",
        ),
    )


def _s3_output(name: str, destination, local_path: str):
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(
            s3_uri=destination, local_path=local_path, s3_upload_mode="EndOfJob"
        ),
    )


@dataclass(frozen=True)
class TuningBudget:
    """How much model selection may do: trials (1 = the defaults only, no search) and
    seconds. The SDK takes these as numbers, not pipeline parameters, so they are
    ``get_pipeline`` arguments; on AWS ``max_seconds`` is at least 120."""

    max_jobs: int = DEFAULT_TUNING_MAX_JOBS
    max_seconds: int = DEFAULT_TUNING_MAX_SECONDS

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_seconds < 1:
            raise ValueError(
                f"tuning budget {self.max_jobs} trials in {self.max_seconds} s: both must be "
                "at least 1 (1 trial trains the defaults only)")


# SageMaker's transient failures: throttled or faulted service calls, no capacity
# for the instance type, an account limit reached, an internal job error (a lost
# host). A script's own failure (AlgorithmError, ClientError) and the quality
# gate's Fail step are deterministic and never retried, here or locally.
JOB_RETRY_INTERVAL_SECONDS = 60
JOB_RETRY_MAX_ATTEMPTS = 3


def job_retry_policies() -> list[Any]:
    """The RetryPolicies of every processing, tuning and training step."""
    from sagemaker.mlops.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )

    return [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT,
                             StepExceptionTypeEnum.THROTTLING],
            interval_seconds=JOB_RETRY_INTERVAL_SECONDS, backoff_rate=2.0,
            max_attempts=JOB_RETRY_MAX_ATTEMPTS,
        ),
        SageMakerJobStepRetryPolicy(
            exception_types=[SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                             SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                             SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT],
            interval_seconds=JOB_RETRY_INTERVAL_SECONDS, backoff_rate=2.0,
            max_attempts=JOB_RETRY_MAX_ATTEMPTS,
        ),
    ]


@dataclass(frozen=True)
class _Context:
    """What every step builder needs."""

    session: Any
    role: str
    region: str
    bucket: str
    pipeline_name: str
    base_job_prefix: str
    params: FraudParameters
    image_uri: str
    cache_config: Any
    tuning: TuningBudget


def _processor(ctx: _Context, step_slug: str):
    """A FrameworkProcessor: runs a script of a staged source folder with python3.

    FrameworkProcessor rather than ScriptProcessor because the whole folder
    ships (its runproc.sh unpacks sourcedir.tar.gz), not a single script.
    """
    from sagemaker.core.processing import FrameworkProcessor

    return FrameworkProcessor(
        image_uri=ctx.image_uri,
        command=["python3"],
        role=ctx.role,
        instance_type=ctx.params.processing_instance_type,
        instance_count=ctx.params.processing_instance_count,
        base_job_name=f"{ctx.base_job_prefix}-{step_slug}",
        sagemaker_session=ctx.session,
    )


def _helper_job_name(ctx: _Context, step_slug: str, code: StagedCode) -> str:
    # The SDK keys its helper uploads by job name; a content-derived name keeps
    # them stable (the name itself is dropped from the definition).
    return f"{ctx.base_job_prefix}-{step_slug}-{code.sha256[:12]}"


def preprocess_step(ctx: _Context, code: StagedCode):
    from sagemaker.mlops.workflow.steps import ProcessingStep

    p = ctx.params
    outputs = [
        _s3_output(
            split,
            _execution_uri(ctx.bucket, ctx.pipeline_name, "Preprocess", split),
            f"{PROCESSING_ROOT}/{split}",
        )
        for split in ("train", "validation", "test")
    ]
    step_args = _processor(ctx, "preprocess").run(
        code=str(code.local_dir / "preprocess.py"),
        source_dir=code.s3_uri,
        job_name=_helper_job_name(ctx, "preprocess", code),
        inputs=[
            _s3_input("features", p.input_features_uri, f"{PROCESSING_ROOT}/input/features")
        ],
        outputs=outputs,
        arguments=[
            "--train-start", p.train_start_date,
            "--train-days", p.train_days,
            "--label-delay-days", p.label_delay_days.to_string(),
            "--validation-days", p.validation_days,
            "--test-days", p.test_days,
        ],  # fmt: skip
    )
    return ProcessingStep(name="Preprocess", step_args=step_args, cache_config=ctx.cache_config,
                          retry_policies=job_retry_policies())


def search_space() -> dict[str, Any]:
    """The hyperparameters model selection tunes, with their ranges (XGBoost on fraud data:
    tree size, learning rate, leaf weight, sampling, regularisation)."""
    from sagemaker.core.parameter import ContinuousParameter, IntegerParameter

    return {
        "max_depth": IntegerParameter(3, 8),
        "eta": ContinuousParameter(0.05, 0.3, scaling_type="Logarithmic"),
        # A leaf needs this much hessian: ~p(1-p) per row, ~0.01 at a 1% fraud rate, so
        # 10 already asks for ~1,000 rows; more starves small portfolios of splits.
        "min_child_weight": ContinuousParameter(0.5, 10.0, scaling_type="Logarithmic"),
        "subsample": ContinuousParameter(0.6, 1.0),
        "colsample_bytree": ContinuousParameter(0.5, 1.0),
        "lambda": ContinuousParameter(0.1, 10.0, scaling_type="Logarithmic"),
    }


def _trainer(ctx: _Context, code: StagedCode, hyperparameters: dict[str, Any], channels: dict):
    """A ModelTrainer running ``train.py`` in the XGBoost framework container (script mode:
    the container's training toolkit downloads ``sagemaker_submit_directory`` and runs
    ``sagemaker_program``), reading ``channels`` ``{name: S3 URI}``."""
    from sagemaker.train.configs import Compute, InputData, OutputDataConfig
    from sagemaker.train.model_trainer import ModelTrainer

    return ModelTrainer(
        training_image=ctx.image_uri,
        compute=Compute(instance_type=ctx.params.training_instance_type, instance_count=1),
        base_job_name=f"{ctx.base_job_prefix}-train",
        role=ctx.role,
        sagemaker_session=ctx.session,
        output_data_config=OutputDataConfig(s3_output_path=_models_uri(ctx)),
        hyperparameters={
            **hyperparameters,
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": code.s3_uri,
            "sagemaker_region": ctx.region,
        },
        input_data_config=[
            InputData(channel_name=name, data_source=uri, content_type="application/x-parquet")
            for name, uri in channels.items()
        ],
    )


def _models_uri(ctx: _Context) -> str:
    return f"s3://{ctx.bucket}/{ctx.pipeline_name}/models"


def _split_channels(preprocess) -> dict[str, Any]:
    outputs = preprocess.properties.ProcessingOutputConfig.Outputs
    return {name: outputs[name].S3Output.S3Uri for name in ("train", "validation")}


def tune_step(ctx: _Context, code: StagedCode, preprocess, hyperparameters: dict[str, Any]):
    """Model selection on the validation window: a HyperparameterTuner over ``train.py``.

    Each trial trains on the train window with early stopping on the validation
    window and reports validation average precision, the objective.
    """
    from sagemaker.mlops.workflow.steps import TuningStep
    from sagemaker.train.tuner import HyperparameterTuner

    trainer = _trainer(ctx, code, hyperparameters, _split_channels(preprocess))
    tuner = HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=TUNING_OBJECTIVE,
        objective_type="Maximize",
        hyperparameter_ranges=search_space(),
        metric_definitions=TUNING_METRIC_DEFINITIONS,
        strategy="Bayesian",
        max_jobs=ctx.tuning.max_jobs,
        max_parallel_jobs=1,
        max_runtime_in_seconds=ctx.tuning.max_seconds,
        base_tuning_job_name=f"{ctx.base_job_prefix}-tune",
    )
    # The channels go to tune() too: the SDK turns only those into the definition's channels.
    step_args = tuner.tune(inputs=list(trainer.input_data_config))
    return TuningStep(name="Tune", step_args=step_args, cache_config=ctx.cache_config,
                      retry_policies=job_retry_policies())


def train_step(ctx: _Context, code: StagedCode, preprocess, tune, hyperparameters: dict[str, Any]):
    """The refit: the tuned hyperparameters, fitted on train + validation.

    The number of boosting rounds comes from the best trial's model
    (``tuned`` channel: its training_metadata.json), which early stopping on the
    validation window chose; the test window stays unseen.
    """
    from sagemaker.mlops.workflow.steps import TrainingStep

    best = tune.properties.BestTrainingJob.TunedHyperParameters
    channels = {
        **_split_channels(preprocess),
        "tuned": tune.get_top_model_s3_uri(
            top_k=0, s3_bucket=ctx.bucket, prefix=f"{ctx.pipeline_name}/models"
        ),
    }
    tuned = {name: best[name] for name in search_space()}
    trainer = _trainer(ctx, code, {**hyperparameters, **tuned, "refit": "true"}, channels)
    return TrainingStep(name="Train", step_args=trainer.train(), cache_config=ctx.cache_config,
                        retry_policies=job_retry_policies())


def evaluate_step(ctx: _Context, code: StagedCode, preprocess, train):
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.steps import ProcessingStep

    report = PropertyFile(name=EVALUATION_REPORT, output_name="evaluation", path=EVALUATION_FILE)
    test_uri = preprocess.properties.ProcessingOutputConfig.Outputs["test"].S3Output.S3Uri
    step_args = _processor(ctx, "evaluate").run(
        code=str(code.local_dir / "evaluate.py"),
        source_dir=code.s3_uri,
        job_name=_helper_job_name(ctx, "evaluate", code),
        inputs=[
            _s3_input(
                "model",
                train.properties.ModelArtifacts.S3ModelArtifacts,
                f"{PROCESSING_ROOT}/model",
            ),
            _s3_input("test", test_uri, f"{PROCESSING_ROOT}/test"),
        ],
        outputs=[
            _s3_output(
                "evaluation",
                _execution_uri(ctx.bucket, ctx.pipeline_name, "Evaluate", "evaluation"),
                f"{PROCESSING_ROOT}/evaluation",
            )
        ],
        arguments=[
            "--alert-threshold", ctx.params.alert_threshold.to_string(),
            "--k", ctx.params.card_precision_k.to_string(),
        ],  # fmt: skip
    )
    step = ProcessingStep(
        name="Evaluate",
        step_args=step_args,
        property_files=[report],
        cache_config=ctx.cache_config,
        retry_policies=job_retry_policies(),
    )
    return step, report


def register_step(
    ctx: _Context, code: StagedCode, train, evaluate, report, model_package_group_name: str
):
    """Register the model with ``inference/inference.py`` as its handler.

    The package's CustomerMetadataProperties carry the run parameters read from
    evaluation.json (``MODEL_PARAMETER_PATHS``): consumers take the label delay,
    feature set version and alert threshold from the approved package. Each
    value is wrapped in a Join because metadata values must be strings.

    The handler ships like the v2 XGBoostModel did: SAGEMAKER_SUBMIT_DIRECTORY
    points at the staged ``inference/`` tarball and the container downloads it
    at start-up. Giving ModelBuilder a local ``source_code`` instead makes v3
    add a "RepackModel" training step whose inputs are uploaded under
    timestamped keys and whose hyperparameters carry the local path, which
    would make the definition differ on every render.
    """
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.serve.model_builder import ModelBuilder

    evaluation_uri = evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"]
    metrics = ModelMetrics(
        model_statistics=MetricsSource(
            s3_uri=Join(on="/", values=[evaluation_uri.S3Output.S3Uri, EVALUATION_FILE]),
            content_type="application/json",
        )
    )
    builder = ModelBuilder(
        s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
        image_uri=xgboost_image_uri(ctx.region, "inference"),
        role_arn=ctx.role,
        sagemaker_session=ctx.session,
        env_vars={
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": code.s3_uri,
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            "SAGEMAKER_REGION": ctx.region,
        },
    )
    step_args = builder.register(
        model_package_group_name=model_package_group_name,
        content_types=["application/json", "text/csv"],
        response_types=["application/json"],
        inference_instances=["ml.m5.large", "ml.m5.xlarge"],
        transform_instances=["ml.m5.xlarge"],
        model_metrics=metrics,
        approval_status=ctx.params.model_approval_status,
        customer_metadata_properties={
            key: Join(on="", values=[
                JsonGet(step_name=evaluate.name, property_file=report, json_path=path)
            ])
            for key, path in MODEL_PARAMETER_PATHS.items()
        },
    )
    return ModelStep(name="Register", step_args=step_args)


def quality_gate_steps(ctx: _Context, evaluate, report, register):
    """ConditionStep: Register when AP >= QualityThresholdAP, else Fail with both numbers."""
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep

    def average_precision():
        return JsonGet(step_name=evaluate.name, property_file=report, json_path=QUALITY_METRIC_PATH)

    threshold = ctx.params.quality_threshold_ap
    fail = FailStep(
        name="QualityGateFailed",
        error_message=Join(
            on=" ",
            values=[
                "Model rejected: average precision",
                average_precision(),
                "is below QualityThresholdAP",
                threshold,
            ],
        ),
    )
    gate = ConditionStep(
        name="QualityGate",
        conditions=[ConditionGreaterThanOrEqualTo(left=average_precision(), right=threshold)],
        if_steps=[register],
        else_steps=[fail],
    )
    return gate, fail


# --- the pipeline ----------------------------------------------------------------


def get_pipeline_custom_tags(
    new_tags: list[dict[str, str]], region: str, sagemaker_project_name: str | None = None
) -> list[dict[str, str]]:
    """``new_tags`` plus the SageMaker project's tags (template behaviour)."""
    if not sagemaker_project_name:
        return new_tags
    import boto3

    client = boto3.client("sagemaker", region_name=region)
    project_arn = client.describe_project(ProjectName=sagemaker_project_name)["ProjectArn"]
    keys = {tag["Key"] for tag in new_tags}
    project_tags = client.list_tags(ResourceArn=project_arn)["Tags"]
    return new_tags + [tag for tag in project_tags if tag["Key"] not in keys]


def default_input_features_uri(bucket: str) -> str:
    """Where the features job writes the feature table (docs/CONTRACTS.md)."""
    return f"s3://{bucket}/features/transactions"


def get_pipeline(
    region: str,
    role: str | None = None,
    default_bucket: str | None = None,
    pipeline_name: str = "fraud-detection",
    model_package_group_name: str = "fraud-detection",
    base_job_prefix: str = "fraud",
    sagemaker_session: PipelineSession | None = None,
    sagemaker_project_name: str | None = None,
    input_features_uri: str | None = None,
    lake_bucket: str = LAKE_BUCKET,
    hyperparameters: dict[str, Any] | None = None,
    enable_caching: bool = True,
    tuning_max_jobs: int = DEFAULT_TUNING_MAX_JOBS,
    tuning_max_seconds: int = DEFAULT_TUNING_MAX_SECONDS,
) -> Pipeline:
    """Build the fraud-detection pipeline.

    Args:
        region: AWS region the pipeline runs in.
        role: execution role ARN for the jobs (required by SageMaker).
        default_bucket: bucket for code, intermediate data and models.
        pipeline_name: also the S3 prefix for code and execution outputs.
        model_package_group_name: registry group the Register step writes to.
        base_job_prefix: prefix of the processing and training job names.
        sagemaker_session: an existing PipelineSession (else one is created).
        sagemaker_project_name: the SageMaker project (the template's buildspec
            passes it); its tags are added by ``get_pipeline_custom_tags``.
        input_features_uri: default of InputFeaturesUri (else the feature
            table in ``lake_bucket``).
        lake_bucket: bucket holding the feature table: the local backend's
            ``lake`` by default; on AWS the data-lake stack output.
        hyperparameters: XGBoost hyperparameters passed to ``training/train.py``.
        enable_caching: cache step results for 30 days (same code, same inputs).
        tuning_max_jobs: model selection trials (1: the defaults only, no search).
        tuning_max_seconds: model selection time budget (on AWS at least 120).
    """
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import CacheConfig

    session = sagemaker_session or get_session(region, default_bucket)
    if role is None:
        from sagemaker.core.helper.session_helper import get_execution_role

        role = get_execution_role(session)
    # A session we create owns default_bucket and creates it if missing.
    bucket = session.default_bucket() if sagemaker_session is None else default_bucket
    bucket = bucket or session.default_bucket()
    params = build_parameters(input_features_uri or default_input_features_uri(lake_bucket))
    ctx = _Context(
        session=session,
        role=role,
        region=region,
        bucket=bucket,
        pipeline_name=pipeline_name,
        base_job_prefix=base_job_prefix,
        params=params,
        image_uri=xgboost_image_uri(region, "training"),
        cache_config=CacheConfig(enable_caching=enable_caching, expire_after="30d"),
        tuning=TuningBudget(tuning_max_jobs, tuning_max_seconds),
    )
    processing = stage_source_dir(session, unit_dir("processing"), bucket, pipeline_name)
    training = stage_source_dir(session, unit_dir("training"), bucket, pipeline_name)
    inference = stage_source_dir(session, unit_dir("inference"), bucket, pipeline_name)

    preprocess = preprocess_step(ctx, processing)
    tune = tune_step(ctx, training, preprocess, dict(hyperparameters or {}))
    train = train_step(ctx, training, preprocess, tune, dict(hyperparameters or {}))
    evaluate, report = evaluate_step(ctx, processing, preprocess, train)
    register = register_step(ctx, inference, train, evaluate, report, model_package_group_name)
    gate, _fail = quality_gate_steps(ctx, evaluate, report, register)
    return Pipeline(
        name=pipeline_name,
        parameters=params.as_list(),
        steps=[preprocess, tune, train, evaluate, gate],
        sagemaker_session=session,
    )
