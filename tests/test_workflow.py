"""The declared workflow runs in order, retries per policy, notifies on failure."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipelines.core.failures import describe_failure, notify_failure
from pipelines.core.notifications import FAILURES_TOPIC, OutboxNotifier, read_outbox
from pipelines.workflow.declaration import FRAUD_WORKFLOW, RetryPolicy, Step, Workflow
from pipelines.workflow.runner import RunContext, StepResults, WorkflowFailed, run_workflow


@dataclass(frozen=True)
class Counted:
    rows: int


@dataclass(frozen=True)
class Doubled:
    rows: int


def _context(workspace):
    from rich.console import Console

    return RunContext(workspace=workspace, options=None, console=Console(quiet=True))


def test_declared_order_respects_dependencies():
    names = [s.name for s in FRAUD_WORKFLOW.order()]
    for step in FRAUD_WORKFLOW.steps:
        for dependency in step.depends_on:
            assert names.index(dependency) < names.index(step.name)


def test_cycle_is_reported_with_step_names():
    cyclic = Workflow("w", (Step("a", "", depends_on=("b",)), Step("b", "", depends_on=("a",))))
    with pytest.raises(ValueError, match="cycle among: a, b"):
        cyclic.order()


def test_retry_policy_backs_off_exponentially():
    assert RetryPolicy(max_attempts=4, interval_seconds=1, backoff_rate=2).delays() == [1, 2, 4]
    assert RetryPolicy().delays() == []


def test_transient_failure_is_retried_then_succeeds(workspace):
    calls = {"n": 0}

    def flaky(ctx):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("throttled")
        return Counted(calls["n"])

    workflow = Workflow("w", (Step("flaky", "", retry=RetryPolicy(3, 1.0, 2.0)),))
    slept: list[float] = []
    outcomes = run_workflow(workflow, {"flaky": flaky}, _context(workspace), sleep=slept.append)
    assert outcomes[0].status == "Succeeded" and outcomes[0].attempts == 3
    assert slept == [1.0, 2.0]


def test_failure_stops_the_run_and_notifies_through_the_outbox(workspace):
    ran = []

    def ok(ctx):
        ran.append("first")
        return Counted(1)

    def broken(ctx):
        raise RuntimeError("disk full while writing dt=2026-01-02")

    def never(ctx):
        ran.append("third")
        return Doubled(0)

    workflow = Workflow(
        "w",
        (
            Step("first", ""),
            Step("second", "", depends_on=("first",), retry=RetryPolicy(2)),
            Step("third", "", depends_on=("second",)),
        ),
    )
    notifier = OutboxNotifier(workspace.outbox)
    with pytest.raises(WorkflowFailed) as failure:
        run_workflow(
            workflow,
            {"first": ok, "second": broken, "third": never},
            _context(workspace),
            notify_failure=lambda event: notify_failure(event, notifier),
            sleep=lambda s: None,
        )
    assert ran == ["first"]
    assert [o.status for o in failure.value.outcomes] == ["Succeeded", "Failed"]
    [message] = read_outbox(workspace.outbox, FAILURES_TOPIC)
    assert message["message"]["step"] == "second"
    assert "disk full" in message["message"]["error"]
    assert message["message"]["log"].endswith(".log")


def test_a_later_step_reads_an_earlier_result_by_its_type(workspace):
    def count(ctx):
        return Counted(21)

    def double(ctx):
        return Doubled(ctx.results.get(Counted).rows * 2)

    workflow = Workflow("w", (Step("count", ""), Step("double", "", depends_on=("count",))))
    context = _context(workspace)
    outcomes = run_workflow(workflow, {"count": count, "double": double}, context)
    assert context.results.get(Doubled) == Doubled(42)
    assert [o.result for o in outcomes] == [Counted(21), Doubled(42)]


def test_asking_for_a_result_no_step_produced_names_what_finished():
    results = StepResults()
    results.add("count", Counted(1))
    with pytest.raises(LookupError, match=r"produced a Doubled .*finished: count \(Counted\)"):
        results.get(Doubled)


def test_two_steps_returning_one_type_are_refused():
    results = StepResults()
    results.add("first", Counted(1))
    with pytest.raises(TypeError, match="'first' and 'second' both return Counted"):
        results.add("second", Counted(2))


def test_a_step_returning_an_untyped_dict_is_refused(workspace):
    workflow = Workflow("w", (Step("loose", ""),))
    with pytest.raises(TypeError, match="step 'loose' returned dict"):
        run_workflow(workflow, {"loose": lambda ctx: {"rows": 1}}, _context(workspace))


def test_missing_implementation_is_named(workspace):
    with pytest.raises(ValueError, match="generate"):
        run_workflow(FRAUD_WORKFLOW, {}, _context(workspace))


def test_sagemaker_step_failure_event_names_step_and_log():
    event = {
        "detail-type": "SageMaker Model Building Pipeline Execution Step Status Change",
        "detail": {
            "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:1:pipeline/p/execution/x",
            "stepName": "Train",
            "failureReason": "AlgorithmError: out of memory",
            "metadata": {"TrainingJob": {"Arn": "arn:aws:sagemaker:us-east-1:1:training-job/t1"}},
        },
    }
    failure = describe_failure(event)
    assert failure["step"] == "Train"
    assert failure["log"] == "CloudWatch /aws/sagemaker/TrainingJobs t1"


def test_unknown_event_is_a_clear_error():
    with pytest.raises(ValueError, match="unrecognised failure event"):
        describe_failure({"detail-type": "Something Else", "detail": {}})


def test_failure_lambda_publishes_to_sns():
    import boto3
    from moto import mock_aws

    from lambdas.failure_notification.handler import handler

    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic_arn = sns.create_topic(Name="pipeline-failures")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="q")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        import os

        os.environ["FAILURES_TOPIC_ARN"] = topic_arn
        try:
            handler(
                {
                    "detail-type": "Glue Job State Change",
                    "detail": {"jobName": "etl", "jobRunId": "jr_1", "message": "bad input"},
                },
                None,
            )
        finally:
            del os.environ["FAILURES_TOPIC_ARN"]
        messages = sqs.receive_message(QueueUrl=queue_url)["Messages"]
        assert "bad input" in messages[0]["Body"]


def test_failed_pipeline_step_on_the_local_bus_lands_in_the_outbox(workspace):
    from pipelines.core.events import SAGEMAKER_SOURCE, local_bus

    deliveries = local_bus(workspace).publish(
        SAGEMAKER_SOURCE,
        "SageMaker Model Building Pipeline Execution Step Status Change",
        {
            "pipelineExecutionArn": "arn:aws:sagemaker:local:0:pipeline/p/execution/e1",
            "stepName": "Train",
            "currentStepStatus": "Failed",
            "failureReason": "AlgorithmError: validation channel is empty",
            "logPath": "/ws/executions/e1/logs/Train.log",
        },
        ["arn:aws:sagemaker:local:0:pipeline/p/execution/e1"],
    )
    assert all(d.ok for d in deliveries)
    [message] = read_outbox(workspace.outbox, FAILURES_TOPIC)
    assert message["message"] == {
        "stage": "sagemaker-pipeline",
        "execution": "arn:aws:sagemaker:local:0:pipeline/p/execution/e1",
        "step": "Train",
        "error": "AlgorithmError: validation channel is empty",
        "log": "/ws/executions/e1/logs/Train.log",
    }
