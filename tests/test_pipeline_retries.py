"""RetryPolicies of the fraud pipeline: declared on every job step for SageMaker's
transient failures, and read the same way by the local executor, which never
retries a deterministic failure (a script error, the quality gate)."""

from __future__ import annotations

import json

import pytest

from pipelines.fraud.definition import render_pipeline
from pipelines.fraud.pipeline import JOB_RETRY_INTERVAL_SECONDS, JOB_RETRY_MAX_ATTEMPTS
from pipelines.model.executor.definition import parse_definition
from pipelines.model.executor.errors import (
    ALGORITHM_ERROR,
    CAPACITY_ERROR,
    CLIENT_ERROR,
    FAIL_STEP,
    JOB_INTERNAL_ERROR,
    RESOURCE_LIMIT,
    THROTTLING,
)
from pipelines.model.executor.policies import retry_delay

TRANSIENT = (THROTTLING, CAPACITY_ERROR, RESOURCE_LIMIT, JOB_INTERNAL_ERROR, "Step.SERVICE_FAULT")
JOB_TYPES = {"Processing", "Training", "Tuning"}


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    rendered = render_pipeline({"region": "us-east-1"}, code_store_dir=tmp_path_factory.mktemp("s"))
    # Flattened: the gate's branches (Register, Fail) are steps of their own.
    return list(parse_definition(json.loads(rendered.definition)).steps.values())


def test_every_job_step_retries_sagemakers_transient_failures(steps):
    jobs = [s for s in steps if s.type in JOB_TYPES]
    assert {s.name for s in jobs} >= {"Preprocess", "Train", "Evaluate"}
    for step in jobs:
        named = {t for policy in step.retry_policies for t in policy["ExceptionType"]}
        assert set(TRANSIENT) <= named, step.name


def test_the_local_executor_reads_them_as_sagemaker_does(steps):
    for step in (s for s in steps if s.type in JOB_TYPES):
        delays = [retry_delay(step.retry_policies, CAPACITY_ERROR, n, 0.0)
                  for n in range(JOB_RETRY_MAX_ATTEMPTS + 1)]
        assert delays == [JOB_RETRY_INTERVAL_SECONDS * 2**n
                          for n in range(JOB_RETRY_MAX_ATTEMPTS)] + [None], step.name
        for deterministic in (ALGORITHM_ERROR, CLIENT_ERROR, FAIL_STEP):
            assert retry_delay(step.retry_policies, deterministic, 0, 0.0) is None


def test_the_quality_gate_and_its_fail_step_are_never_retried(steps):
    for step in steps:
        if step.type in {"Condition", "Fail"}:
            assert step.retry_policies == [], step.name
