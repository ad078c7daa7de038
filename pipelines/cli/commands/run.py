"""``fraudops run``: the main job, the whole declared workflow on the local backend.

generate -> ingest -> features -> pipeline -> approve -> deploy -> score ->
backup, with progress per step, retries per the declaration, and a failure
notification (outbox) if a step gives up. ``--input PATH --column-map FILE``
runs the same workflow on your own transactions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pipelines.cli.commands._common import (
    UserError,
    add_time_origin_argument,
    add_workdir_argument,
    open_workspace,
)
from pipelines.core.params import DEFAULT_LABEL_DELAY_DAYS
from pipelines.fraud.pipeline import DEFAULT_TUNING_MAX_JOBS, DEFAULT_TUNING_MAX_SECONDS

if TYPE_CHECKING:  # the workflow is imported when a run starts, not for `fraudops --help`
    from pipelines.fraud.local_run import EvaluationMetrics
    from pipelines.workflow.runner import RunContext, StepOutcome
    from pipelines.workflow.steps import RunOptions

DEMO_APPROVER = "demo-approver"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole workflow locally (what `make run` does)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workdir_argument(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--input", type=Path, help="your landing file or folder (skips generate)")
    data.add_argument("--column-map", type=Path, help="JSON {your_column: canonical_column}")
    add_time_origin_argument(data)
    data.add_argument("--transactions", type=int, default=500_000,
                      help="synthetic transactions to generate (default 500,000)")
    data.add_argument("--days", type=int, default=90, help="days of synthetic data (default 90)")
    data.add_argument("--seed", type=int, default=42)
    data.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1))
    data.add_argument("--malformed-rate", type=float, default=0.001,
                      help="share of synthetic rows spoiled to show quarantine (default 0.001)")
    model = parser.add_argument_group("model (pipeline parameters)")
    model.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    model.add_argument("--label-delay-days", type=int, default=DEFAULT_LABEL_DELAY_DAYS,
                       help="days until a fraud label is known: the features are built with it "
                       f"and the pipeline takes it from them (default {DEFAULT_LABEL_DELAY_DAYS})")
    model.add_argument("--train-start", default=None, help="ISO date; default: first day")
    for window in ("train", "validation", "test"):
        model.add_argument(f"--{window}-days", default=None, metavar="DAYS|HOURSh",
                           help="whole days (7) or hours (36h); default: derived from the data")
    model.add_argument("--quality-threshold", type=float, default=None,
                       help="minimum test average precision to register (the gate)")
    model.add_argument("--alert-threshold", type=float, default=None)
    model.add_argument("--k", type=int, default=None, help="card precision@k (default 100)")
    model.add_argument("--tuning-budget", type=int, default=DEFAULT_TUNING_MAX_JOBS - 1,
                       metavar="TRIALS",
                       help="hyperparameter candidates model selection tries besides the "
                       f"defaults on the validation window (default {DEFAULT_TUNING_MAX_JOBS - 1}"
                       "; 0 skips the search)")
    model.add_argument("--tuning-seconds", type=int, default=DEFAULT_TUNING_MAX_SECONDS,
                       help="time budget of model selection (default "
                       f"{DEFAULT_TUNING_MAX_SECONDS}; on AWS at least 120)")
    parser.add_argument("--approver", default=os.environ.get("FRAUDOPS_DEMO_APPROVER",
                                                             DEMO_APPROVER),
                        help="display name of the demo approval (recorded beside your own "
                        "account, as a demo approval, never as a second person's review)")
    parser.add_argument("--webhook-url", default=None, help="also POST alerts here")
    parser.set_defaults(handler=_run)


def _options(args: argparse.Namespace) -> RunOptions:
    from pipelines.workflow.steps import RunOptions

    if args.input and not args.input.exists():
        raise UserError(f"--input {args.input}: no such file or folder")
    if args.column_map and not args.input:
        raise UserError("--column-map applies to your own data: pass --input PATH too")
    if args.time_origin and not args.input:
        raise UserError("--time-origin applies to your own data: pass --input PATH too")
    if args.time_unit and not args.input:
        raise UserError("--time-unit applies to your own data: pass --input PATH too")
    if args.tuning_budget < 0 or args.tuning_seconds < 1:
        raise UserError("--tuning-budget must be 0 or more and --tuning-seconds at least 1")
    return RunOptions(
        input_path=args.input,
        column_map=args.column_map,
        time_origin=args.time_origin,
        time_unit=args.time_unit,
        transactions=args.transactions,
        days=args.days,
        seed=args.seed,
        start_date=args.start_date,
        malformed_rate=args.malformed_rate,
        engine=args.engine,
        label_delay_days=args.label_delay_days,
        approver=args.approver,
        webhook_url=args.webhook_url,
        pipeline_parameters={
            "TrainStartDate": args.train_start,
            "TrainDays": args.train_days,
            "ValidationDays": args.validation_days,
            "TestDays": args.test_days,
            "QualityThresholdAP": args.quality_threshold,
            "AlertThreshold": args.alert_threshold,
            "CardPrecisionK": args.k,
        },
        # Model selection limits are numbers in the definition, not execution parameters.
        pipeline_kwargs={"tuning_max_jobs": args.tuning_budget + 1,
                         "tuning_max_seconds": args.tuning_seconds},
    )


def _run(args: argparse.Namespace) -> int:
    from pipelines.core.failures import notify_failure
    from pipelines.core.notifications import OutboxNotifier
    from pipelines.fraud.local_run import render_ahead
    from pipelines.workflow.declaration import FRAUD_WORKFLOW
    from pipelines.workflow.runner import RunContext, WorkflowFailed, run_workflow
    from pipelines.workflow.steps import IMPLEMENTATIONS

    ws = open_workspace(args)
    console = Console()
    context = RunContext(workspace=ws, options=_options(args), console=console)
    notifier = OutboxNotifier(ws.outbox, args.webhook_url)
    started = time.perf_counter()
    try:
        # The pipeline step's definition is rendered while the data steps run (on the core
        # they leave idle); the step then reuses that render.
        with render_ahead(ws, context.options.pipeline_kwargs):
            outcomes = run_workflow(
                FRAUD_WORKFLOW, IMPLEMENTATIONS, context,
                notify_failure=lambda event: notify_failure(event, notifier),
            )
    except WorkflowFailed as failure:
        _print_steps(console, failure.outcomes)
        last = failure.outcomes[-1]
        # One line, not wrapped into the table: what failed, the value, what to change.
        console.print(f"[red bold]{failure.step} failed[/]"
                      f"{' (not retried)' if last.permanent else ''}: {last.error}",
                      soft_wrap=True, markup=True, highlight=False)
        console.print(f"failure notification written to {ws.outbox}/pipeline-failures.jsonl",
                      soft_wrap=True)
        return 1
    _print_steps(console, outcomes)
    _print_summary(console, context, time.perf_counter() - started)
    return 0


def _print_steps(console: Console, outcomes: list[StepOutcome]) -> None:
    table = Table(title="workflow steps")
    for column in ("step", "status", "attempts", "seconds"):
        table.add_column(column)
    for outcome in outcomes:
        style = "green" if outcome.status == "Succeeded" else "red"
        table.add_row(outcome.name, f"[{style}]{outcome.status}[/]", str(outcome.attempts),
                      f"{outcome.seconds:.1f}")
    console.print(table)


def _print_summary(console: Console, context: RunContext[RunOptions], seconds: float) -> None:
    from pipelines.data.features.build import FeatureBuildSummary
    from pipelines.data.ingest.reconcile import IngestReport
    from pipelines.serving.score_and_alert import ScoredAndAlerted
    from pipelines.workflow.steps import (
        ApproveResult,
        BackupSummary,
        DeployResult,
        PipelineResult,
    )

    results = context.results
    ingest = results.get(IngestReport)
    features = results.get(FeatureBuildSummary)
    evaluation = results.get(PipelineResult).evaluation
    approved = results.get(ApproveResult)
    deployed = results.get(DeployResult)
    scored = results.get(ScoredAndAlerted)
    table = Table(title=f"fraudops run finished in {seconds:.0f} s", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")  # paths are printed whole, never cut
    rows = [
        ("ingested", f"{ingest.rows_read:,} read = {ingest.rows_curated:,} curated"
                     f" + {ingest.rows_quarantined:,} quarantined"
                     f" + {ingest.duplicates_skipped:,} duplicates"),
        ("features", f"{features.rows:,} rows x {features.features}"),
        ("feature groups used", ", ".join(f"{group} ({n})"
                                          for group, n in features.feature_groups.items())),
        *([("left out", ", ".join(f"{group} ({why})"
                                  for group, why in features.left_out_groups.items()))]
          if features.left_out_groups else []),
        *_split_rows(evaluation.split),
        *_tuning_rows(evaluation.tuning),
        ("test average precision", f"{evaluation.average_precision:.3f}"),
        ("test ROC AUC", f"{evaluation.roc_auc:.3f}"),
        *_card_precision_rows(evaluation),
        ("precision / recall at threshold",
         f"{evaluation.precision_at_threshold:.3f} / {evaluation.recall_at_threshold:.3f}"),
        ("model version", f"{deployed.version} ({approved.model_package_arn})"),
        ("approved by", approved.approver),
        ("endpoint", f"{deployed.url} (answered {deployed.answered})"),
        ("scored", f"{scored.scoring.rows:,} transactions of {', '.join(scored.days)}"),
        ("alerts raised", f"{scored.alerts:,} (+{scored.grouped} grouped); "
                          "`fraudops alerts list`"),
        ("backup", results.get(BackupSummary).snapshot),
        ("try", 'fraudops query "SELECT decision, count(*) FROM scored GROUP BY 1"'),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    # Paths on lines of their own, never wrapped, so they can be copied whole.
    for what, path in (("evaluation", evaluation.path),
                       ("test scores (transaction_id, customer_id, timestamp, is_fraud, score)",
                        evaluation.scores_path),
                       ("workspace", context.workspace.root)):
        console.print(f"{what}: {path}", soft_wrap=True, highlight=False, markup=False)


def _split_rows(split: dict) -> list[tuple[str, str]]:
    """The windows the model was fitted and tested on, and the label-delay gap."""
    windows = split.get("windows") or {}
    rows = [(f"{name} window", window.get("span") or f"{window['start']}..{window['end']}")
            for name, window in windows.items()]
    if "label_delay_gap_hours" in split:
        hours = float(split["label_delay_gap_hours"])
        gap = f"{hours / 24:g} days" if hours % 24 == 0 else f"{hours:g} hours"
        how = ("chronological 60/20/20 split by time (short history)"
               if split.get("method") == "fractions" else "day windows")
        rows.append(("label-delay gap", f"{gap} before the test window; {how}"))
    return rows


def _tuning_rows(tuning: dict) -> list[tuple[str, str]]:
    """The hyperparameters model selection chose on the validation window."""
    if not tuning:
        return []
    chosen = ", ".join(f"{name}={value}" for name, value in (tuning.get("chosen") or {}).items())
    return [("model selection", f"{tuning.get('summary', '')} {chosen}".strip())]


def _card_precision_rows(evaluation: EvaluationMetrics) -> list[tuple[str, str]]:
    k = evaluation.k
    if evaluation.card_precision_at_k is None:
        return [(f"card precision@{k}", "n/a: the data has no card (customer) ids")]
    rows = [(f"card precision@{k}, all cards", f"{evaluation.card_precision_at_k:.3f}")]
    if evaluation.card_precision_known_removed is not None:
        rows.append((f"card precision@{k}, known-compromised cards removed",
                     f"{evaluation.card_precision_known_removed:.3f}"))
    return rows
