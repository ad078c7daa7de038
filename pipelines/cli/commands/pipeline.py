"""``fraudops pipeline list|describe|steps|resume``: local pipeline executions.

Executions are recorded by the local executor (``pipelines.model.executor``) under
the workspace; these commands show them the way the SageMaker console does
and resume a failed one from its failed step.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace
from pipelines.model.executor import (
    ExecutionStore,
    ExecutorError,
    resume_pipeline_execution,
)

_STATUS_STYLE = {"Succeeded": "green", "Failed": "red", "Executing": "yellow", "Stopped": "magenta"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fraudops pipeline list|describe|steps|resume``."""
    parser = subparsers.add_parser(
        "pipeline", help="list, inspect and resume local pipeline executions"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="executions, newest first")
    listing.add_argument("--pipeline-name", default=None, help="only this pipeline")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=_list)

    describe = actions.add_parser("describe", help="one execution's status and parameters")
    describe.add_argument("execution_id")
    describe.add_argument("--json", action="store_true", help="print the raw response shape")
    describe.set_defaults(handler=_describe)

    steps = actions.add_parser("steps", help="the steps of one execution")
    steps.add_argument("execution_id")
    steps.add_argument("--json", action="store_true", help="print the raw response shape")
    steps.set_defaults(handler=_steps)

    resume = actions.add_parser("resume", help="re-run a failed execution from its failed step(s)")
    resume.add_argument("execution_id")
    resume.add_argument("--no-progress", action="store_true", help="no per-step display")
    resume.set_defaults(handler=_resume)

    for sub in (listing, describe, steps, resume):
        add_workdir_argument(sub)


def _store(args: argparse.Namespace) -> ExecutionStore:
    return ExecutionStore(open_workspace(args).executions)


def _list(args: argparse.Namespace) -> int:
    summaries = _store(args).list_pipeline_executions(args.pipeline_name, args.limit)[
        "PipelineExecutionSummaries"
    ]
    table = Table(title="pipeline executions (local)")
    for column in ("execution id", "pipeline", "status", "started (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("failure reason")
    for s in summaries:
        reason = (s["PipelineExecutionFailureReason"] or "").splitlines()
        table.add_row(
            s["PipelineExecutionId"],
            s["PipelineName"],
            _styled(s["PipelineExecutionStatus"]),
            s["StartTime"][:19].replace("T", " "),
            reason[0] if reason else "",
        )
    Console().print(table)
    return 0


def _describe(args: argparse.Namespace) -> int:
    described = _call(lambda: _store(args).describe_pipeline_execution(args.execution_id))
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    console = Console()
    console.print(
        f"[bold]{described['PipelineName']}[/] {described['PipelineExecutionId']}: "
        f"{_styled(described['PipelineExecutionStatus'])}"
    )
    console.print(f"started {described['CreationTime']}  ended {described['EndTime'] or '-'}")
    for parameter in described["PipelineParameters"]:
        console.print(f"  {parameter['Name']} = {parameter['Value']!r}")
    if described["FailureReason"]:
        console.print("[red]failure:[/]", end=" ")
        console.print(described["FailureReason"], markup=False)
    return 0


def _steps(args: argparse.Namespace) -> int:
    listed = _call(lambda: _store(args).list_pipeline_execution_steps(args.execution_id))
    if args.json:
        print(json.dumps(listed, indent=2, default=str))
        return 0
    table = Table(title=f"steps of {args.execution_id}")
    table.add_column("step", no_wrap=True)
    for column in ("type", "status", "attempts", "detail"):
        table.add_column(column)
    failed_logs = []
    for step in reversed(listed["PipelineExecutionSteps"]):
        table.add_row(
            step["StepName"],
            step["StepType"],
            _styled(step["StepStatus"]),
            str(step["AttemptCount"]),
            _step_detail(step),
        )
        if step["StepStatus"] == "Failed" and step["LogPath"]:
            failed_logs.append(f"log of {step['StepName']}: {step['LogPath']}")
    console = Console()
    console.print(table)
    for line in failed_logs:
        console.print(line, markup=False, soft_wrap=True)
    return 0


def _resume(args: argparse.Namespace) -> int:
    workspace = open_workspace(args)
    summary = _call(
        lambda: resume_pipeline_execution(
            args.execution_id, workspace, progress=not args.no_progress
        )
    )
    Console().print(f"execution {summary.execution_id}: {_styled(summary.status)}")
    if summary.failure_reason:
        print(summary.failure_reason)
    return 0 if summary.succeeded else 1


def _step_detail(step: dict) -> str:
    if step.get("FailureReason"):
        return step["FailureReason"].splitlines()[0]
    metadata = step.get("Metadata") or {}
    if metadata.get("CacheHit"):
        return f"cache hit from {metadata['CacheHit']}"
    if "Condition" in metadata:
        return f"outcome {metadata['Condition']['Outcome']}"
    for kind in ("ProcessingJob", "TrainingJob", "TuningJob", "RegisterModel", "Model"):
        if kind in metadata:
            return metadata[kind]["Arn"]
    return ""


def _styled(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _call(fn):
    """Run an executor call, turning its errors into messages for the user."""
    try:
        return fn()
    except ExecutorError as exc:
        raise UserError(str(exc)) from exc
