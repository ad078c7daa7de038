"""A small real XGBoost model package, for tests, benchmarks and demos.

It is trained on synthetic rows (fraud when a few features are large) and
packaged exactly like ``training/train.py``'s output, then registered with the
CreateModelPackage request the RegisterModel step sends. Nothing here is a
stub: the endpoint, deployer and scorer load it with the real ``inference.py``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from pipelines.core.params import DEFAULT_ALERT_THRESHOLD, DEFAULT_LABEL_DELAY_DAYS, ModelParameters
from pipelines.core.workspace import ARTIFACTS_BUCKET, Workspace
from pipelines.serving.deploy.artifacts import FEATURE_SET_FILE, METADATA_FILE, MODEL_FILE

SAMPLE_FEATURES: tuple[str, ...] = ("amount", "cust_tx_count_1d", "term_fraud_rate_7d", "is_night")
# The image the pipeline names (pipelines.fraud.pipeline.xgboost_image_uri, us-east-1).
XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.2-0"
# What the sample model carries onward, as a pipeline-registered model does.
SAMPLE_PARAMETERS = ModelParameters(
    label_delay_days=DEFAULT_LABEL_DELAY_DAYS,
    feature_set_version="sample-1",
    alert_threshold=DEFAULT_ALERT_THRESHOLD,
)


def synthetic_features(rows: int, features: tuple[str, ...], seed: int = 0) -> pd.DataFrame:
    """Random non-negative feature values with a learnable fraud label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.gamma(2.0, 1.0, size=(rows, len(features))), columns=list(features))
    signal = frame.iloc[:, : min(3, len(features))].sum(axis=1)
    frame["is_fraud"] = (signal > np.quantile(signal, 0.97)).astype(np.int8)
    return frame


def train_model_files(
    model_dir: Path,
    features: tuple[str, ...] = SAMPLE_FEATURES,
    rows: int = 4000,
    num_round: int = 20,
    max_depth: int = 4,
    seed: int = 0,
) -> Path:
    """Write xgboost-model.json, feature_set.json and training_metadata.json."""
    model_dir.mkdir(parents=True, exist_ok=True)
    frame = synthetic_features(rows, features, seed)
    dtrain = xgb.DMatrix(frame[list(features)], label=frame["is_fraud"])
    params = {
        "objective": "binary:logistic",
        "max_depth": max_depth,
        "eta": 0.3,
        "nthread": 1,
        "seed": seed,
    }
    booster = xgb.train(params, dtrain, num_boost_round=num_round)
    booster.save_model(str(model_dir / MODEL_FILE))
    feature_set = {
        "version": SAMPLE_PARAMETERS.feature_set_version,
        "feature_columns": list(features),
        "label_column": "is_fraud",
        "id_columns": ["transaction_id"],
        "label_delay_days": SAMPLE_PARAMETERS.label_delay_days,
    }
    (model_dir / FEATURE_SET_FILE).write_text(json.dumps(feature_set))
    metadata: dict[str, Any] = {
        "xgboost_version": xgb.__version__,
        "rows": {"train": rows},
        "hyperparameters": {**params, "num_round": num_round},
        "label_delay_days": SAMPLE_PARAMETERS.label_delay_days,
    }
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))
    return model_dir


def write_tarball(model_dir: Path, tar_path: Path) -> Path:
    """Pack the model directory's files at the archive root, as SageMaker does."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return tar_path


def write_corrupt_tarball(tar_path: Path, features: tuple[str, ...] = SAMPLE_FEATURES) -> Path:
    """A well-formed tar.gz whose model file is not a model: ``model_fn`` must fail."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    members = {
        MODEL_FILE: b'{"learner": "this is not a booster"',
        FEATURE_SET_FILE: json.dumps({"feature_columns": list(features)}).encode(),
    }
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tar_path


def create_request(
    group: str,
    model_data_url: str,
    submit_directory: str | None = None,
    evaluation_uri: str | None = None,
    parameters: ModelParameters | None = SAMPLE_PARAMETERS,
) -> dict[str, Any]:
    """The CreateModelPackage request the RegisterModel step carries.

    ``parameters=None`` leaves out the CustomerMetadataProperties, like a package
    registered before models carried their run parameters.
    """
    environment = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"}
    if submit_directory:
        environment["SAGEMAKER_SUBMIT_DIRECTORY"] = submit_directory
    request: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": "fraud model (sample)",
        "InferenceSpecification": {
            "Containers": [
                {"Image": XGBOOST_IMAGE, "ModelDataUrl": model_data_url, "Environment": environment}
            ],
            "SupportedContentTypes": ["application/json", "text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
            "SupportedTransformInstanceTypes": ["ml.m5.xlarge"],
        },
        "ModelApprovalStatus": "PendingManualApproval",
    }
    if parameters is not None:
        request["CustomerMetadataProperties"] = parameters.as_metadata()
    if evaluation_uri:
        request["ModelMetrics"] = {
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}
            }
        }
    return request


def upload_model(workspace: Workspace, model_dir: Path, key: str) -> str:
    """Pack ``model_dir`` to ``s3://artifacts/<key>`` in the local object store."""
    uri = workspace.s3_uri(ARTIFACTS_BUCKET, key)
    write_tarball(model_dir, workspace.local_path(uri))
    return uri
