"""Turn a registered model package into files a local endpoint or scorer can load.

A package names its artifact (``ModelDataUrl``, a ``model.tar.gz`` holding
``xgboost-model.json``, ``feature_set.json`` and ``training_metadata.json``)
and its handler (``SAGEMAKER_SUBMIT_DIRECTORY`` + ``SAGEMAKER_PROGRAM``). The
artifact is unpacked once per version into the workspace (through a temporary
directory, so a crash never leaves half a model) and reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.code import unit_dir
from pipelines.core.workspace import Workspace

MODEL_FILE = "xgboost-model.json"
FEATURE_SET_FILE = "feature_set.json"
METADATA_FILE = "training_metadata.json"
REQUIRED_MODEL_FILES = (MODEL_FILE, FEATURE_SET_FILE)
DEFAULT_PROGRAM = "inference.py"
CONTAINER_MODEL_DIR = "/opt/ml/model"

# The repository's inference/ folder: the handler used when a package names none.


class ArtifactError(Exception):
    """The package's artifact or handler cannot be found or read."""


@dataclass(frozen=True)
class ModelBundle:
    """One model version on local disk, ready for ``model_fn``."""

    package_arn: str
    group: str
    version: int
    model_dir: Path
    code_dir: Path
    program: str
    feature_set: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def feature_columns(self) -> list[str]:
        return list(self.feature_set["feature_columns"])


def primary_container(package: dict[str, Any]) -> dict[str, Any]:
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers:
        raise ArtifactError(f"model package {package.get('ModelPackageArn')} has no container")
    return containers[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` atomically; refuse unsafe members."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArtifactError(
                f"model artifact {archive} is not a readable tar.gz ({exc}): "
                "re-run training to produce a new artifact"
            ) from exc
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack_cached(archive: Path, dest: Path) -> Path:
    """Unpack unless ``dest`` already holds this exact archive (checked by SHA-256)."""
    if not archive.is_file():
        raise ArtifactError(f"model artifact {archive} does not exist")
    checksum = _sha256(archive)
    marker = dest / ".source-sha256"
    if marker.is_file() and marker.read_text().strip() == checksum:
        return dest
    _extract(archive, dest)
    marker.write_text(checksum)
    return dest


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{what} {path} is not readable JSON: {exc}") from exc


def _resolve_code_dir(
    environment: dict[str, str], model_dir: Path, bundle_dir: Path, workspace: Workspace
) -> Path:
    """Where the handler lives, following SageMaker's SAGEMAKER_SUBMIT_DIRECTORY rules."""
    submit = environment.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if not submit:
        return unit_dir("inference")
    if submit.startswith(CONTAINER_MODEL_DIR):
        return model_dir / submit[len(CONTAINER_MODEL_DIR) :].lstrip("/")
    local = workspace.local_path(submit)
    if local.is_file() and local.name.endswith((".tar.gz", ".tgz")):
        return _unpack_cached(local, bundle_dir / "code")
    if local.is_dir():
        return local
    raise ArtifactError(
        f"SAGEMAKER_SUBMIT_DIRECTORY {submit} is neither a directory nor a .tar.gz "
        f"(looked at {local})"
    )


def materialize(package: dict[str, Any], workspace: Workspace) -> ModelBundle:
    """Unpack a described model package into ``<workspace>/state/models/<group>/v<N>/``."""
    container = primary_container(package)
    group = package["ModelPackageGroupName"]
    version = int(package["ModelPackageVersion"])
    bundle_dir = workspace.state_dir / "models" / group / f"v{version}"
    archive = workspace.local_path(container["ModelDataUrl"])
    model_dir = _unpack_cached(archive, bundle_dir / "model")
    missing = [name for name in REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ArtifactError(
            f"model artifact {container['ModelDataUrl']} lacks {', '.join(missing)}: "
            "it must hold the files training/train.py writes"
        )
    environment = container.get("Environment") or {}
    code_dir = _resolve_code_dir(environment, model_dir, bundle_dir, workspace)
    program = environment.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
    if not (code_dir / program).is_file():
        raise ArtifactError(f"inference handler {code_dir / program} does not exist")
    feature_set = _read_json(model_dir / FEATURE_SET_FILE, "feature set")
    if not feature_set.get("feature_columns"):
        raise ArtifactError(f"{model_dir / FEATURE_SET_FILE} names no feature_columns")
    metadata_path = model_dir / METADATA_FILE
    metadata = _read_json(metadata_path, "training metadata") if metadata_path.is_file() else {}
    return ModelBundle(
        package_arn=package["ModelPackageArn"],
        group=group,
        version=version,
        model_dir=model_dir,
        code_dir=code_dir,
        program=program,
        feature_set=feature_set,
        metadata=metadata,
    )
