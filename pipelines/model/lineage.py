"""Model lineage: from a registered model version back to the bytes it was trained on.

``resolve_lineage(ws, version)`` answers, from the workspace records alone:

* the pipeline execution whose Register step created the package, its steps
  (status, cache hits) and their code: each code tarball's SHA-256, checked
  against the content hash its upload path names;
* the feature table partitions the Preprocess step read (``dt`` partitions,
  SHA-256 of each Parquet file, rows), which split window each fed, and a
  check that they are still the data the split counted (row counts per window
  match the split's counts, files not rewritten after the step started);
* the curated partitions behind those days and the ingestion runs that wrote
  them (run logs and ``ingest.run`` audit entries);
* the feature definition version (trained vs current), the evaluation, the
  approval decisions (who, why) and the deployments of the package.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.compliance.audit import list_entries
from pipelines.core.fileio import sha256_file
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURE_SET_VERSION
from pipelines.model.deployments import DeploymentHistory
from pipelines.model.executor.store import ExecutionStore
from pipelines.model.registry import LocalModelRegistry, NotFoundError

_SHA256_IN_PATH = re.compile(r"/([0-9a-f]{64})(?:/|$)")
_INGESTION_FILE = re.compile(r"^part-(?P<id>.+)\.parquet$")
SPLITS = ("train", "validation", "test")


class LineageError(LookupError):
    """The records needed to trace a model are missing; the message names what and where."""


# --- model package and execution ----------------------------------------------------------
def resolve_package(ws: Workspace, version: str | int | None,
                    group: str | None = None) -> dict[str, Any]:
    """DescribeModelPackage of ``version`` (number or ARN); ``None`` = the deployed one."""
    registry = LocalModelRegistry.for_workspace(ws)
    try:
        if version is None:
            version = deployed_package_arn(ws)
        return registry.describe_model_package(registry.resolve_arn(version, group))
    except NotFoundError as exc:
        raise LineageError(str(exc)) from exc


def deployed_package_arn(ws: Workspace) -> str:
    """The ARN of the package currently serving (newest InService deployment)."""
    for attempt in DeploymentHistory(ws.registry_db).list():
        if attempt["status"] == "InService":
            return str(attempt["model_package_arn"])
    raise LineageError("no model has been deployed in this workspace: name a model version")


def find_registering_execution(ws: Workspace, arn: str) -> tuple[dict, list[dict]]:
    """The execution (row) whose RegisterModel step created ``arn``, and its steps."""
    if not (ws.executions / "executions.sqlite").is_file():
        raise LineageError(f"no pipeline executions recorded under {ws.executions}")
    store = ExecutionStore(ws.executions)
    summaries = store.list_pipeline_executions(limit=100_000)["PipelineExecutionSummaries"]
    for summary in summaries:
        steps = store.step_rows(summary["PipelineExecutionId"])
        for step in steps:
            registered = ((step.get("metadata") or {}).get("RegisterModel") or {}).get("Arn")
            if step["step_type"] == "RegisterModel" and registered == arn:
                return store.execution_row(summary["PipelineExecutionId"]), steps
    raise LineageError(f"no recorded pipeline execution registered {arn}")


# --- code -----------------------------------------------------------------------------------
def _code_uris(step: dict[str, Any]) -> list[str]:
    """The code locations a step ran: processing ``code`` input, training or model source."""
    inputs = step.get("inputs") or {}
    uris = [i["S3Input"]["S3Uri"] for i in inputs.get("ProcessingInputs", [])
            if i.get("InputName") in ("code", "entrypoint")]
    submit = (inputs.get("HyperParameters") or {}).get("sagemaker_submit_directory")
    uris += [submit] if submit else []
    for container in (inputs.get("InferenceSpecification") or {}).get("Containers", []):
        source = (container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY")
        uris += [source] if source else []
    return uris


def code_artifact(ws: Workspace, uri: str) -> dict[str, Any]:
    """One code location: its files' SHA-256 and whether they match the hash in the path."""
    local = ws.local_path(uri)
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else (
        [local] if local.is_file() else [])
    hashes = {p.name: sha256_file(p) for p in files}
    named = _SHA256_IN_PATH.search(uri)
    # The upload path names the hash of the tarball (or of the single script uploaded).
    tarball = hashes.get("sourcedir.tar.gz") or (next(iter(hashes.values()))
                                                if len(hashes) == 1 else None)
    return {
        "uri": uri,
        "files": hashes,
        "path_sha256": named.group(1) if named else None,
        "present": bool(files),
        "matches_path": bool(named and tarball and tarball == named.group(1)),
    }


def _step_entry(ws: Workspace, step: dict[str, Any]) -> dict[str, Any]:
    metadata = step.get("metadata") or {}
    return {
        "name": step["step_name"], "type": step["step_type"], "status": step["status"],
        "started": step["start_time"], "ended": step["end_time"],
        "cache_hit_from": metadata.get("CacheHit"),
        "job": next((v.get("Arn") for v in metadata.values() if isinstance(v, dict)), None),
        "code": [code_artifact(ws, uri) for uri in _code_uris(step)],
        "outputs": step.get("output_hashes") or {},
    }


# --- data -----------------------------------------------------------------------------------
def _step(steps: list[dict], step_type: str, name: str) -> dict[str, Any]:
    for step in steps:
        if step["step_name"] == name or (step["step_type"] == step_type and name == "*"):
            return step
    raise LineageError(f"the execution has no {name} step")


def split_manifests(ws: Workspace, preprocess: dict[str, Any]) -> dict[str, dict]:
    """``feature_set.json`` of each split the Preprocess step wrote."""
    manifests = {}
    for uri in (preprocess.get("output_hashes") or {}):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        path = ws.local_path(uri) / "feature_set.json"
        if name in SPLITS and path.is_file():
            manifests[name] = json.loads(path.read_text(encoding="utf-8"))
    if "train" not in manifests:
        raise LineageError("the Preprocess step's train/feature_set.json is missing from "
                           f"{ws.artifacts}; the split windows cannot be resolved")
    return manifests


def window_of(day: str, windows: dict[str, dict]) -> str:
    """Which split window a ``YYYY-MM-DD`` day belongs to (``unused`` if none)."""
    for name, window in windows.items():
        if window["start"] <= day <= window["end"]:
            return name
    return "unused"


def _partitions(directory: Path, hash_files: bool = True) -> list[dict[str, Any]]:
    """``dt=`` partitions of a zone: per file name, SHA-256, rows and modification time."""
    partitions = []
    for part in sorted(directory.glob("dt=*")):
        files = []
        for path in sorted(part.glob("*.parquet")):
            files.append({
                "file": path.name,
                "sha256": sha256_file(path) if hash_files else None,
                "rows": pq.ParquetFile(path).metadata.num_rows,
                "modified": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(),
            })
        partitions.append({"dt": part.name.split("=", 1)[1], "files": files,
                           "rows": sum(f["rows"] for f in files)})
    return partitions


def feature_inputs(ws: Workspace, preprocess: dict[str, Any],
                   windows: dict[str, dict]) -> dict[str, Any]:
    """The feature partitions the Preprocess step read and whether they are unchanged."""
    inputs = (preprocess.get("inputs") or {}).get("ProcessingInputs", [])
    uri = next((i["S3Input"]["S3Uri"] for i in inputs if i.get("InputName") == "features"), None)
    if uri is None:
        raise LineageError("the Preprocess step has no 'features' input")
    partitions = _partitions(ws.local_path(uri))
    for partition in partitions:
        partition["window"] = window_of(partition["dt"], windows)
    started = datetime.fromisoformat(preprocess["start_time"])
    rewritten = sorted({p["dt"] for p in partitions for f in p["files"]
                        if datetime.fromisoformat(f["modified"]) > started})
    counts = {}
    for name, window in windows.items():
        read = sum(p["rows"] for p in partitions if p["window"] == name)
        counted = int(window["rows"]) + int(window.get("dropped_unlabelled", 0))
        counts[name] = {"rows_now": read, "rows_at_split": counted, "match": read == counted}
    return {"uri": uri, "partitions": partitions, "window_row_check": counts,
            "rewritten_after_step": rewritten,
            "verified": not rewritten and all(c["match"] for c in counts.values())}


def _source_name(source: Any) -> str:
    """A landing file's name (run logs hold per-source dicts; older ones plain paths)."""
    path = source.get("source_file", "") if isinstance(source, dict) else str(source)
    return Path(path).name


def ingestion_runs(ws: Workspace, ids: set[str]) -> list[dict[str, Any]]:
    """Run logs and audit entries of the ingestion runs ``ids``."""
    audited = {e["subject"]: e for e in list_entries(ws, action="ingest.run")}
    runs = []
    for run_id in sorted(ids):
        log = ws.logs / "ingest" / f"{run_id}.json"
        report = json.loads(log.read_text(encoding="utf-8")) if log.is_file() else {}
        entry = audited.get(run_id)
        runs.append({
            "ingestion_id": run_id,
            "log": str(log) if log.is_file() else None,
            "started_at": report.get("started_at"), "finished_at": report.get("finished_at"),
            "rows_read": report.get("rows_read"), "rows_curated": report.get("rows_curated"),
            "rows_quarantined": report.get("rows_quarantined"),
            "sources": [_source_name(s) for s in report.get("sources") or []],
            "audit": {"seq": entry["seq"], "ts": entry["ts"], "actor": entry["actor"],
                      "hash": entry["hash"]} if entry else None,
        })
    return runs


def curated_inputs(ws: Workspace, days: list[str]) -> dict[str, Any]:
    """The curated partitions of ``days`` and the ingestion runs that wrote each file."""
    wanted = set(days)
    partitions = [p for p in _partitions(ws.curated) if p["dt"] in wanted]
    ids = set()
    for partition in partitions:
        for entry in partition["files"]:
            match = _INGESTION_FILE.match(entry["file"])
            entry["ingestion_id"] = match.group("id") if match else None
            ids.update([entry["ingestion_id"]] if match else [])
    return {"partitions": partitions, "ingestion_runs": ingestion_runs(ws, ids)}


# --- evaluation, approvals, deployments -------------------------------------------------------
def evaluation_of(ws: Workspace, package: dict[str, Any]) -> dict[str, Any]:
    """The evaluation.json the package's ModelMetrics point at (metrics summary + location)."""
    uri = (((package.get("ModelMetrics") or {}).get("ModelQuality") or {})
           .get("Statistics") or {}).get("S3Uri")
    if not uri or not ws.local_path(uri).is_file():
        return {"uri": uri, "present": False}
    path = ws.local_path(uri)
    report = json.loads(path.read_text(encoding="utf-8"))
    metrics = {name: value.get("value") for name, value in
               report.get("binary_classification_metrics", {}).items()}
    return {"uri": uri, "present": True, "sha256": sha256_file(path), "metrics": metrics,
            "alert_threshold": report.get("alert_threshold"),
            "test_window": report.get("test_window"), "n_test": report.get("n_test"),
            "n_fraud": report.get("n_fraud"), "document": report}


def deployments_of(ws: Workspace, arn: str) -> list[dict[str, Any]]:
    history = DeploymentHistory(ws.registry_db).list()
    keep = ("id", "status", "backend", "endpoint_url", "started_at", "finished_at", "message",
            "previous_model_package_arn")
    return [{k: d[k] for k in keep} for d in reversed(history) if d["model_package_arn"] == arn]


def resolve_lineage(ws: Workspace, version: str | int | None = None,
                    group: str | None = None) -> dict[str, Any]:
    """Everything a model version came from and went to (see the module docstring)."""
    package = resolve_package(ws, version, group)
    arn = package["ModelPackageArn"]
    execution, steps = find_registering_execution(ws, arn)
    preprocess = _step(steps, "Processing", "Preprocess")
    manifests = split_manifests(ws, preprocess)
    windows = manifests["train"]["split"]["windows"]
    features = feature_inputs(ws, preprocess, windows)
    used_days = [p["dt"] for p in features["partitions"] if p["window"] != "unused"]
    trained_version = manifests["train"].get("version")
    evaluation = evaluation_of(ws, package)
    return {
        "model_package": {
            "arn": arn, "group": package["ModelPackageGroupName"],
            "version": package["ModelPackageVersion"],
            "status": package["ModelApprovalStatus"], "created": package["CreationTime"],
            "created_by": package["CreatedBy"]["UserProfileName"],
            "model_data": package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"],
        },
        "execution": {
            "id": execution["execution_id"], "pipeline": execution["pipeline_name"],
            "status": execution["status"], "started_by": execution["started_by"],
            "start_time": execution["start_time"], "end_time": execution["end_time"],
            "parameters": json.loads(execution["parameters"] or "{}"),
        },
        "steps": [_step_entry(ws, step) for step in steps],
        "split": {name: manifests[name]["split"]["window"] for name in manifests},
        "training_days": {name: [p["dt"] for p in features["partitions"] if p["window"] == name]
                          for name in windows},
        "feature_table": features,
        "curated": curated_inputs(ws, used_days),
        "feature_definitions": {"trained_version": trained_version,
                                "current_version": FEATURE_SET_VERSION,
                                "current_matches": trained_version == FEATURE_SET_VERSION,
                                "label_delay_days":
                                    manifests["train"]["split"].get("label_delay_days"),
                                "feature_columns": manifests["train"].get("feature_columns")},
        "evaluation": {k: v for k, v in evaluation.items() if k != "document"},
        "approvals": LocalModelRegistry.for_workspace(ws).list_decisions(arn),
        "deployments": deployments_of(ws, arn),
        "resolved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def training_window(lineage: dict[str, Any]) -> tuple[date, date]:
    """The train window's first and last day."""
    window = lineage["split"]["train"]
    return date.fromisoformat(window["start"]), date.fromisoformat(window["end"])
