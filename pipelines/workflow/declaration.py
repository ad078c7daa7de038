"""The end-to-end workflow, declared once.

The same declaration is executed locally by :mod:`pipelines.workflow.runner`
(``fraudops run``), rendered as a Step Functions state machine and exported
as an AWS Data Pipeline definition (:mod:`pipelines.workflow.render`). Each
step names its retry policy, what it rolls back on failure, and the AWS
service integration that runs it in production.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
class AwsTask:
    """How a step runs on AWS: a Step Functions service integration.

    ``resource`` is the Step Functions resource ARN (``arn:aws:states:::...``);
    ``parameters`` its Parameters block, with ``${Name}`` placeholders that the
    templates substitute (job names, ARNs). ``poll`` marks integrations with no
    ``.sync`` pattern that the state machine must poll for completion.
    """

    resource: str
    parameters: dict[str, object]
    poll: dict[str, object] | None = None
    data_pipeline_type: str = "ShellCommandActivity"


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
            "Feature job: point-in-time features (DuckDB locally, Spark on EMR).",
            depends_on=("ingest",),
            retry=TRANSIENT,
            rollback="the previous feature table stays in place until the new one is complete",
            aws=AwsTask(
                resource="arn:aws:states:::elasticmapreduce:addStep.sync",
                parameters={
                    "ClusterId": "${EmrClusterId}",
                    "Step": {
                        "Name": "fraud-features",
                        "ActionOnFailure": "CONTINUE",
                        "HadoopJarStep": {
                            "Jar": "command-runner.jar",
                            "Args": ["spark-submit", "${FeatureJobScript}"],
                        },
                    },
                },
                data_pipeline_type="EmrActivity",
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
                poll={
                    "resource": "arn:aws:states:::aws-sdk:sagemaker:describePipelineExecution",
                    "status_path": "$.PipelineExecutionStatus",
                    "succeeded": "Succeeded",
                    "failed": ["Failed", "Stopped"],
                    "wait_seconds": 60,
                },
            ),
        ),
        Step(
            "approve",
            "Demo approval of the registered model by your own account, recorded as a demo "
            "(on AWS a model-risk officer, not the model's creator, approves in the registry).",
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
            "Batch-score the latest day (batch transform) and raise alerts.",
            depends_on=("deploy",),
            retry=TRANSIENT,
            rollback="the day's scored partition is replaced atomically or not at all",
            aws=AwsTask(
                resource="arn:aws:states:::sagemaker:createTransformJob.sync",
                parameters={
                    "TransformJobName.$": "States.Format('fraud-score-{}', $$.Execution.Name)",
                    "ModelName": "${ModelName}",
                    "TransformInput": {
                        "DataSource": {
                            "S3DataSource": {
                                "S3DataType": "S3Prefix",
                                "S3Uri": "${ScoringInputUri}",
                            }
                        },
                        "ContentType": "text/csv",
                        "SplitType": "Line",
                    },
                    "TransformOutput": {"S3OutputPath": "${ScoredOutputUri}"},
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
                    "ResourceArn": "${LakeBucketArn}",
                    "IamRoleArn": "${BackupRoleArn}",
                },
            ),
        ),
    ),
    tags={"project": "fraudops"},
)
