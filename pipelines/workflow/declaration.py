"""The end-to-end workflow, declared once.

The same declaration is executed locally by :mod:`pipelines.workflow.runner`
(``fraudops run``) and rendered as a Step Functions state machine
(:mod:`pipelines.workflow.render`). Each step names its retry policy, what it
rolls back on failure, and the AWS service integration that runs it in
production, with the names (``${Name}``) the workflow stack fills in.
There is no AWS Data Pipeline rendering: that service is closed to new
customers, and Step Functions is its successor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.data.features.emr import ARCHIVE_NAME, ENTRY_POINT, JobCode, serverless_job_driver


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed step ``max_attempts - 1`` times with exponential backoff."""

    max_attempts: int = 1
    interval_seconds: float = 0.0
    backoff_rate: float = 2.0

    def delays(self) -> list[float]:
        """Seconds to wait before each retry (one entry per retry)."""
        return [self.interval_seconds * self.backoff_rate**i for i in range(self.max_attempts - 1)]


@dataclass(frozen=True)
class Lookup:
    """A read that runs before a step's task, e.g. which model the endpoint serves.

    ``selector`` is the Step Functions ResultSelector; the selection lands at
    ``$.results.<step>.<name>`` for the task's ``.$`` parameters to use.
    """

    name: str
    resource: str
    parameters: dict[str, object]
    selector: dict[str, str]


@dataclass(frozen=True)
class Poll:
    """Wait for a task with no ``.sync`` integration: describe until a final status.

    ``parameters`` may refer to the start call's selected result as
    ``$.results.<step>``; ``selector`` must select a ``Status``.
    """

    resource: str
    parameters: dict[str, object]
    selector: dict[str, str]
    succeeded: str
    failed: tuple[str, ...]
    wait_seconds: int = 60
    token: str | None = None  # the start call's idempotency token parameter, if any


@dataclass(frozen=True)
class AwsTask:
    """How a step runs on AWS: a Step Functions service integration.

    ``resource`` is the Step Functions resource ARN (``arn:aws:states:::...``);
    ``parameters`` its Parameters block, with ``${Name}`` placeholders that the
    workflow stack substitutes (job names, ARNs). ``lookups`` run first;
    ``poll`` marks an integration with no ``.sync`` pattern.
    """

    resource: str
    parameters: dict[str, object]
    lookups: tuple[Lookup, ...] = ()
    poll: Poll | None = None
    selector: dict[str, str] | None = None  # ResultSelector of the task itself


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    rollback: str = "nothing to roll back: the step writes atomically"
    aws: AwsTask | None = None  # None: local-only (on AWS this happens elsewhere)


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: tuple[Step, ...]
    failure_handler: str = "notify-failure"
    tags: dict[str, str] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"workflow {self.name!r} has no step {name!r}")

    def order(self) -> list[Step]:
        """Steps in dependency order (stable: declaration order breaks ties)."""
        done: list[str] = []
        pending = list(self.steps)
        while pending:
            ready = [s for s in pending if all(d in done for d in s.depends_on)]
            if not ready:
                names = ", ".join(s.name for s in pending)
                raise ValueError(f"workflow {self.name!r} has a dependency cycle among: {names}")
            done.append(ready[0].name)
            pending.remove(ready[0])
        return [self.step(n) for n in done]


TRANSIENT = RetryPolicy(max_attempts=3, interval_seconds=2.0, backoff_rate=2.0)

# Where the AWS tasks read and write: the lake bucket's tables, the uploaded job code.
LAKE = "s3://${LakeBucket}"
CODE = "s3://${ArtifactsBucket}/code/${CodeVersion}"
FEATURE_JOB_CODE = JobCode(py_files_uri=f"{CODE}/{ARCHIVE_NAME}", entry_uri=f"{CODE}/{ENTRY_POINT}")
# The day a run scores: the execution input's run.day, else the day it started
# (render.py's configure state).
RUN_DAY = "$.run.day"
# What batch transform sends the inference handler and asks back: a features
# Parquet file in, the scored table's rows as Parquet out (inference/inference.py).
PARQUET = "application/x-parquet"
# Recovery points of the workflow's on-demand backup, in days: the daily plan's
# retention (infra/backup.yaml RetentionDays), inside the vault lock's 35..3650.
BACKUP_RETENTION_DAYS = 1827
_DESCRIBE = "arn:aws:states:::aws-sdk:sagemaker:"
_RESULTS = "$.results.score"

FRAUD_WORKFLOW = Workflow(
    name="fraud-detection-workflow",
    steps=(
        Step(
            "generate",
            "Write synthetic daily landing drops (local demo data; on AWS data lands in S3).",
        ),
        Step(
            "ingest",
            "Glue ETL: validate, quarantine, dedupe, tokenise, write day partitions.",
            depends_on=("generate",),
            retry=TRANSIENT,
            rollback="staged partitions are discarded; the dedupe ledger is not advanced",
            aws=AwsTask(
                resource="arn:aws:states:::glue:startJobRun.sync",
                parameters={"JobName": "${GlueJobName}"},
            ),
        ),
        Step(
            "features",
            "Feature job: point-in-time features (DuckDB locally, Spark on EMR Serverless).",
            depends_on=("ingest",),
            retry=TRANSIENT,
            rollback="the previous feature table stays in place until the new one is complete",
            aws=AwsTask(
                resource="arn:aws:states:::emr-serverless:startJobRun.sync",
                parameters={
                    "ApplicationId": "${EmrApplicationId}",
                    "ExecutionRoleArn": "${EmrJobRoleArn}",
                    "Name": "fraudops-features",
                    "ClientToken.$": "States.UUID()",
                    "JobDriver": serverless_job_driver(
                        FEATURE_JOB_CODE,
                        f"{LAKE}/curated/transactions/",
                        f"{LAKE}/features/transactions/",
                        "${LabelDelayDays}",
                    ),
                },
            ),
        ),
        Step(
            "pipeline",
            "SageMaker Pipeline: preprocess, train, evaluate, gate, register.",
            depends_on=("features",),
            retry=RetryPolicy(max_attempts=2, interval_seconds=30.0),
            rollback="a failed execution registers nothing",
            aws=AwsTask(
                resource="arn:aws:states:::aws-sdk:sagemaker:startPipelineExecution",
                parameters={"PipelineName": "${PipelineName}"},
                selector={"PipelineExecutionArn.$": "$.PipelineExecutionArn"},
                poll=Poll(
                    resource=f"{_DESCRIBE}describePipelineExecution",
                    parameters={
                        "PipelineExecutionArn.$": "$.results.pipeline.PipelineExecutionArn"},
                    selector={"PipelineExecutionArn.$": "$.PipelineExecutionArn",
                              "Status.$": "$.PipelineExecutionStatus"},
                    succeeded="Succeeded",
                    failed=("Failed", "Stopped"),
                    token="ClientRequestToken",
                ),
            ),
        ),
        Step(
            "approve",
            "Demo approver (a second person) approves the registered model "
            "(on AWS a model-risk officer approves in the registry).",
            depends_on=("pipeline",),
        ),
        Step(
            "deploy",
            "Deploy the approved model; roll back if the health check fails "
            "(on AWS the approval event triggers the deploy Lambda).",
            depends_on=("approve",),
            rollback="the previous endpoint keeps serving",
        ),
        Step(
            "score",
            "Batch-score the run's day with the model the endpoint serves (batch transform) "
            "into the scored table (on AWS, alerts come from the stream).",
            depends_on=("deploy",),
            retry=TRANSIENT,
            rollback="the day's scored partition is replaced atomically or not at all",
            aws=AwsTask(
                # The approved package the deploy Lambda put on the endpoint, found at run
                # time: endpoint -> its config -> its model -> the model package.
                lookups=(
                    Lookup("endpoint", f"{_DESCRIBE}describeEndpoint",
                           {"EndpointName": "${EndpointName}"},
                           {"EndpointConfigName.$": "$.EndpointConfigName"}),
                    Lookup("config", f"{_DESCRIBE}describeEndpointConfig",
                           {"EndpointConfigName.$": f"{_RESULTS}.endpoint.EndpointConfigName"},
                           {"ModelName.$": "$.ProductionVariants[0].ModelName"}),
                    Lookup("model", f"{_DESCRIBE}describeModel",
                           {"ModelName.$": f"{_RESULTS}.config.ModelName"},
                           {"ModelPackageName.$": "$.PrimaryContainer.ModelPackageName"}),
                    Lookup("package", f"{_DESCRIBE}describeModelPackage",
                           {"ModelPackageName.$": f"{_RESULTS}.model.ModelPackageName"},
                           {"Version.$": "States.Format('{}', $.ModelPackageVersion)",
                            "Threshold.$": "$.CustomerMetadataProperties.alert_threshold"}),
                ),
                resource="arn:aws:states:::sagemaker:createTransformJob.sync",
                parameters={
                    "TransformJobName.$": "States.Format('fraud-score-{}', States.UUID())",
                    "ModelName.$": f"{_RESULTS}.config.ModelName",
                    "Environment": {
                        "FRAUD_MODEL_VERSION.$": f"{_RESULTS}.package.Version",
                        "FRAUD_ALERT_THRESHOLD.$": f"{_RESULTS}.package.Threshold",
                    },
                    "BatchStrategy": "SingleRecord",
                    "MaxPayloadInMB": 100,
                    "TransformInput": {
                        "DataSource": {
                            "S3DataSource": {
                                "S3DataType": "S3Prefix",
                                "S3Uri.$": f"States.Format('{LAKE}/features/transactions/"
                                           f"dt={{}}/', {RUN_DAY})",
                            }
                        },
                        "ContentType": PARQUET,
                        "SplitType": "None",
                    },
                    "TransformOutput": {
                        "S3OutputPath.$": f"States.Format('{LAKE}/scored/transactions/"
                                          f"dt={{}}/', {RUN_DAY})",
                        "Accept": PARQUET,
                        "KmsKeyId": "${DataKeyArn}",
                    },
                    "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
                },
            ),
        ),
        Step(
            "backup",
            "Back up the lake, registry and records if the schedule says it is due.",
            depends_on=("score",),
            retry=TRANSIENT,
            rollback="an interrupted snapshot has no manifest and is ignored",
            aws=AwsTask(
                resource="arn:aws:states:::aws-sdk:backup:startBackupJob",
                parameters={
                    "BackupVaultName": "${BackupVaultName}",
                    "ResourceArn": "arn:aws:s3:::${LakeBucket}",
                    "IamRoleArn": "${BackupRoleArn}",
                    "Lifecycle": {"DeleteAfterDays": BACKUP_RETENTION_DAYS},
                },
                selector={"BackupJobId.$": "$.BackupJobId"},
                poll=Poll(
                    resource="arn:aws:states:::aws-sdk:backup:describeBackupJob",
                    parameters={"BackupJobId.$": "$.results.backup.BackupJobId"},
                    selector={"BackupJobId.$": "$.BackupJobId", "Status.$": "$.State"},
                    succeeded="COMPLETED",
                    failed=("FAILED", "ABORTED", "EXPIRED", "PARTIAL"),
                    token="IdempotencyToken",
                ),
            ),
        ),
    ),
    tags={"project": "fraudops"},
)
