"""Local implementations of the declared workflow's steps.

Each function takes the :class:`RunContext` and returns a small summary that
the final report prints. They call the same units the CLI commands call; the
workflow adds only order, retries and failure handling.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq

from pipelines.workflow.runner import RunContext, StepFunction


def generate(ctx: RunContext) -> dict[str, Any]:
    """Synthetic landing drops, unless the user brought their own input."""
    if ctx.options.get("input"):
        return {"skipped": f"using your data: {ctx.options['input']}"}
    from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops

    config = GeneratorConfig(
        transactions=ctx.options["transactions"],
        days=ctx.options["days"],
        seed=ctx.options["seed"],
        start_date=ctx.options["start_date"],
    )
    with ctx.console.status(f"generating {config.transactions:,} transactions"):
        table = generate_transactions(config)
        drops = write_landing_drops(
            table, ctx.workspace.landing, malformed_rate=ctx.options["malformed_rate"],
            seed=config.seed,
        )
    return {"transactions": table.num_rows, "files": len(drops),
            "malformed": drops.malformed_total,
            "landing": str(ctx.workspace.landing)}


def ingest(ctx: RunContext) -> dict[str, Any]:
    from pipelines.data.ingest.columns import load_column_map
    from pipelines.data.ingest.reconcile import render
    from pipelines.data.ingest.run import ingest as run_ingest

    column_map = load_column_map(ctx.options["column_map"]) if ctx.options.get(
        "column_map") else None
    paths = [ctx.options["input"]] if ctx.options.get("input") else None
    report = run_ingest(ctx.workspace, paths, column_map=column_map)
    render(report, ctx.console)
    return {"read": report.rows_read, "curated": report.rows_curated,
            "quarantined": report.rows_quarantined, "duplicates": report.duplicates_skipped,
            "balanced": report.balanced,
            "curated_zone": str(ctx.workspace.curated)}


def features(ctx: RunContext) -> dict[str, Any]:
    from pipelines.data.features.build import build_feature_table

    summary = build_feature_table(
        ctx.workspace, label_delay_days=ctx.options["label_delay_days"],
        engine=ctx.options["engine"],
    )
    return {"rows": summary.rows, "features": summary.features,
            "seconds": round(summary.seconds, 1), "feature_zone": str(ctx.workspace.features)}


def pipeline(ctx: RunContext) -> dict[str, Any]:
    from pipelines.core.identity import current_user
    from pipelines.fraud.definition import render_pipeline_cached
    from pipelines.model.executor import run_pipeline_definition

    rendered = render_pipeline_cached(
        {}, code_store_dir=ctx.workspace.object_store,
        cache_dir=ctx.workspace.state_dir / "definitions",
    )
    parameters = {k: v for k, v in ctx.options["pipeline_parameters"].items() if v is not None}
    execution = run_pipeline_definition(
        rendered.definition, ctx.workspace, parameters, current_user(), rendered.name
    )
    if not execution.succeeded:
        logs = ctx.workspace.executions / execution.execution_id
        raise RuntimeError(
            f"pipeline execution {execution.execution_id} {execution.status}: "
            f"{execution.failure_reason} (logs: {logs}; `fraudops pipeline resume` retries)"
        )
    register = execution.step("Register")
    evaluation = _evaluation(ctx, execution)
    return {"execution": execution.execution_id,
            "model_package_arn": register.properties.get("ModelPackageArn", ""),
            "evaluation": evaluation}


def _evaluation(ctx: RunContext, execution: Any) -> dict[str, Any]:
    """The Evaluate step's evaluation.json, read from the local object store."""
    outputs = execution.step("Evaluate").properties["ProcessingOutputConfig"]["Outputs"]
    uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "evaluation")
    path = ctx.workspace.local_path(uri.rstrip("/") + "/evaluation.json")
    report = json.loads(path.read_text())
    metrics = report["binary_classification_metrics"]
    return {
        "average_precision": metrics["average_precision"]["value"],
        "roc_auc": metrics["roc_auc"]["value"],
        "card_precision_at_k": metrics["card_precision_at_k"]["value"],
        "k": metrics["card_precision_at_k"]["k"],
        "precision_at_threshold": metrics["precision_at_threshold"]["value"],
        "recall_at_threshold": metrics["recall_at_threshold"]["value"],
        "path": str(path),
    }


def approve(ctx: RunContext) -> dict[str, Any]:
    """The configured demo approver (never the trainer) approves; the event deploys."""
    from pipelines.model.registry import LocalModelRegistry

    arn = ctx.results["pipeline"]["model_package_arn"]
    registry = LocalModelRegistry.for_workspace(ctx.workspace)
    evaluation = ctx.results["pipeline"]["evaluation"]
    decision = registry.update_model_package(
        arn, "Approved", ctx.options["approver"],
        f"demo approval by fraudops run: AP {evaluation['average_precision']:.3f} "
        f"passed the quality gate",
    )
    failed = [d for d in decision["Deliveries"] if not d.ok]
    return {"model_package_arn": arn, "approver": ctx.options["approver"],
            "deploy_deliveries": len(decision["Deliveries"]), "deploy_failures": len(failed)}


def deploy(ctx: RunContext) -> dict[str, Any]:
    """Approval already deployed through the event bus; confirm the endpoint answers."""
    from pipelines.serving.deploy.local import read_endpoint_state

    state = read_endpoint_state(ctx.workspace)
    arn = ctx.results["approve"]["model_package_arn"]
    if not state or state.get("model_package_arn") != arn:
        raise RuntimeError(
            f"the approved model {arn} is not serving (endpoint state: {state}); "
            f"see {ctx.workspace.logs} and `fraudops model show`"
        )
    return {"url": state["url"], "version": state.get("version"),
            "answered": _invoke_sample(state["url"], ctx)}


def _invoke_sample(url: str, ctx: RunContext) -> str:
    """One real request to the endpoint with the latest day's first feature row."""
    import urllib.request

    feature_set = json.loads((ctx.workspace.features / "_feature_set.json").read_text())
    latest = sorted(ctx.workspace.features.glob("dt=*"))[-1]
    row = pq.read_table(next(latest.glob("*.parquet")),
                        columns=feature_set["feature_columns"]).slice(0, 1).to_pylist()[0]
    body = json.dumps({"instances": [row]}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()[:200]


def score(ctx: RunContext) -> dict[str, Any]:
    """Batch-score the latest day and raise alerts from its scores."""
    from pipelines.core.notifications import OutboxNotifier
    from pipelines.serving.alerts import AlertPolicy, CaseQueue, raise_alerts
    from pipelines.serving.scoring.batch import load_model, partition_dir, score_day

    latest = sorted(p.name.split("=", 1)[1] for p in ctx.workspace.features.glob("dt=*"))[-1]
    model = load_model(ctx.workspace)
    summary = score_day(ctx.workspace, latest, model=model)
    scored = pq.read_table(partition_dir(ctx.workspace, latest)).to_pylist()
    counts = raise_alerts(
        scored, AlertPolicy(threshold=summary.threshold), CaseQueue(ctx.workspace.cases_db),
        OutboxNotifier(ctx.workspace.outbox, ctx.options.get("webhook_url")),
    )
    return {"day": latest, "rows": summary.rows, "threshold": summary.threshold,
            "alerts": counts["alerts"], "grouped": counts["grouped"],
            "scored_zone": str(ctx.workspace.scored), "outbox": str(ctx.workspace.outbox)}


def backup(ctx: RunContext) -> dict[str, Any]:
    from pipelines.compliance import vault

    result = vault.run_if_due(ctx.workspace)
    if result is None:
        return {"snapshot": "not due", "vault": str(ctx.workspace.vault)}
    return {"snapshot": result.snapshot.snapshot_id, "files": result.files,
            "bytes_written": result.bytes_written, "vault": str(ctx.workspace.vault)}


IMPLEMENTATIONS: dict[str, StepFunction] = {
    "generate": generate,
    "ingest": ingest,
    "features": features,
    "pipeline": pipeline,
    "approve": approve,
    "deploy": deploy,
    "score": score,
    "backup": backup,
}
