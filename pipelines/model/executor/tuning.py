"""A TuningStep run locally: the tuning job's search in one training process.

SageMaker starts one training job per trial. Here the tuning job's training
job definition runs once, with the tuning job's parameter ranges, limits,
objective and strategy handed over as the hyperparameter
``fraudops-tuning-search``; ``training/train.py`` then searches in process
(successive halving, the data read and binned once; ``training/search.py``)
and records every trial in its ``training_metadata.json``.

The trials become the step's properties, as DescribeHyperParameterTuningJob and
ListTrainingJobsForHyperParameterTuningJob give them: ``BestTrainingJob``
(``TunedHyperParameters`` as text, the objective value) and
``TrainingJobSummaries``, best first. Trials that successive halving dropped
are ``Stopped`` (as SageMaker's early stopping marks them). The best trial's
model is written to ``<S3OutputPath>/<its job name>/output/model.tar.gz``,
where ``TuningStep.get_top_model_s3_uri(0, ...)`` points.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.model.executor import objects
from pipelines.model.executor.containers import (
    JobContext,
    JobResult,
    check_training_shape,
    run_training_job,
)
from pipelines.model.executor.errors import CLIENT_ERROR, StepFailure, UnsupportedFeatureError
from pipelines.model.executor.store import ARN_PREFIX

# The hyperparameter train.py reads the search from (training/search.py, which this
# package cannot import: a test checks the two names agree).
SEARCH_HYPERPARAMETER = "fraudops-tuning-search"
METADATA_FILE = "training_metadata.json"
STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
# The properties a Tuning step exposes besides its request (pipelines.model.executor.validate).
TUNING_PROPERTIES = {
    "HyperParameterTuningJobName", "HyperParameterTuningJobArn",
    "HyperParameterTuningJobStatus", "BestTrainingJob", "TrainingJobSummaries",
    "TrainingJobStatusCounters", "ObjectiveStatusCounters",
}


def training_request(args: dict[str, Any]) -> dict[str, Any]:
    """The CreateTrainingJob request the search runs as: the job definition, its static
    hyperparameters plus the search (ranges, limits, objective, strategy) as JSON."""
    definition = args.get("TrainingJobDefinition") or {}
    config = args.get("HyperParameterTuningJobConfig") or {}
    limits = config.get("ResourceLimits") or {}
    search = {
        "ranges": config.get("ParameterRanges") or {},
        "max_jobs": limits.get("MaxNumberOfTrainingJobs") or 1,
        "max_seconds": limits.get("MaxRuntimeInSeconds"),
        "objective": (config.get("HyperParameterTuningJobObjective") or {}).get("MetricName"),
        "strategy": config.get("Strategy"),
        "seed": config.get("RandomSeed"),
    }
    request = {k: v for k, v in definition.items()
               if k not in ("StaticHyperParameters", "HyperParameterRanges", "DefinitionName")}
    request["HyperParameters"] = {**(definition.get("StaticHyperParameters") or {}),
                                  SEARCH_HYPERPARAMETER: json.dumps(search)}
    return request


def check_tuning_shape(args: dict[str, Any], step_name: str) -> None:
    """Raise ``UnsupportedFeatureError`` for a tuning job the executor cannot honour."""
    where = f"Tuning step {step_name!r}"
    config = args.get("HyperParameterTuningJobConfig") or {}
    if "TrainingJobDefinitions" in args:
        raise UnsupportedFeatureError(f"{where}: several training job definitions (one only)")
    if config.get("Strategy") not in STRATEGIES:
        raise UnsupportedFeatureError(f"{where}: strategy {config.get('Strategy')!r}")
    objective = config.get("HyperParameterTuningJobObjective") or {}
    if objective.get("Type") != "Maximize" or not objective.get("MetricName"):
        raise UnsupportedFeatureError(
            f"{where}: objective {objective!r} (the local search maximises one metric)")
    if args.get("WarmStartConfig"):
        raise UnsupportedFeatureError(f"{where}: WarmStartConfig")
    check_training_shape(training_request(args), step_name)


def _trial_name(job_name: str, index: int) -> str:
    """SageMaker's trial naming, ``<tuning job>-<3 digits>``, within 63 characters."""
    return f"{job_name[:59].rstrip('-')}-{index:03d}"


def run_tuning_job(args: dict[str, Any], ctx: JobContext) -> JobResult:
    """Run a resolved CreateHyperParameterTuningJob request; ``StepFailure`` on failure."""
    check_tuning_shape(args, ctx.step_name)
    result = run_training_job(training_request(args), ctx)
    metadata_path = ctx.base / "model" / METADATA_FILE
    tuning = json.loads(metadata_path.read_text(encoding="utf-8")).get("tuning") if (
        metadata_path.is_file()) else None
    if not tuning or not tuning.get("trials"):
        raise StepFailure(
            f"{CLIENT_ERROR}: the training script wrote no trials to {METADATA_FILE}: it must "
            f"run the search given as hyperparameter {SEARCH_HYPERPARAMETER!r} "
            "(training/train.py does)", CLIENT_ERROR)
    objective = tuning.get("objective") or "objective"
    finished = tuning["chosen_trial"]
    summaries = [_summary(ctx.job_name, trial, objective, finished) for trial in tuning["trials"]]
    best = summaries[0]
    output_path = str(args["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"])
    best_uri = f"{output_path.rstrip('/')}/{best['TrainingJobName']}/output/model.tar.gz"
    search_uri = result.properties["ModelArtifacts"]["S3ModelArtifacts"]
    target = ctx.workspace.local_path(best_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = objects.copy_atomic(ctx.workspace.local_path(search_uri), target)
    arn = f"{ARN_PREFIX}:hyper-parameter-tuning-job/{ctx.job_name}"
    statuses = [s["TrainingJobStatus"] for s in summaries]
    properties = {
        **args,
        "HyperParameterTuningJobName": ctx.job_name,
        "HyperParameterTuningJobArn": arn,
        "HyperParameterTuningJobStatus": "Completed",
        "BestTrainingJob": best,
        "TrainingJobSummaries": summaries,
        "TrainingJobStatusCounters": {status: statuses.count(status) for status in set(statuses)},
        "ObjectiveStatusCounters": {"Succeeded": len(summaries)},
    }
    outputs = {**result.outputs, best_uri: {"": digest}}
    return JobResult(properties, {"TuningJob": {"Arn": arn}}, outputs)


def _summary(job_name: str, trial: dict[str, Any], objective: str, finished: int) -> dict:
    name = _trial_name(job_name, int(trial["trial"]))
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"{ARN_PREFIX}:training-job/{name}",
        # Successive halving stops the trials it drops, as SageMaker's early stopping would.
        "TrainingJobStatus": "Completed" if trial["trial"] == finished else "Stopped",
        "TunedHyperParameters": {k: str(v) for k, v in trial["hyperparameters"].items()},
        "FinalHyperParameterTuningJobObjectiveMetric": {
            "Type": "Maximize", "MetricName": objective,
            "Value": trial["validation_average_precision"],
        },
        "ObjectiveStatus": "Succeeded",
    }
