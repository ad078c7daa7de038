"""Model card and validation report (SR 11-7 style) for one registered model version.

Sections: model summary, purpose and intended use, data windows, features
(plain-English meaning from the feature definitions), training and test
metrics, alert threshold with its precision/recall (and the PR curve), input
drift (PSI per feature: the report period's feature rows against the exact
rows the model was trained on), limitations, approval history and lineage.
"""

from __future__ import annotations

import io
import json
import tarfile
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.analytics.reports.document import Chart, Report, ReportError, Section, Series, Table
from pipelines.analytics.reports.drift import MODERATE, SIGNIFICANT, FeatureDrift, feature_drift
from pipelines.analytics.reports.html import format_cell
from pipelines.core.workspace import Workspace
from pipelines.data.features.definitions import FEATURES
from pipelines.model.lineage import LineageError, resolve_lineage
from pipelines.model.registry import APPROVED, DEMO, DEMO_NOTICE, FOUR_EYES

SECTION_TITLES = (
    "Model summary", "Purpose and intended use", "Data windows", "Features",
    "Performance: training and test", "Alert threshold", "Input drift (PSI)", "Limitations",
    "Approval history", "Lineage", "Model selection",
)
MAX_CURVE_POINTS = 200


def _training_metadata(ws: Workspace, model_data_url: str) -> dict[str, Any]:
    """``training_metadata.json`` from the model artifact (empty if it cannot be read)."""
    path = ws.local_path(model_data_url)
    if not path.is_file():
        return {}
    with tarfile.open(path, "r:gz") as archive:
        try:
            member = archive.extractfile("training_metadata.json")
        except KeyError:
            return {}
        return json.load(io.TextIOWrapper(member, encoding="utf-8")) if member else {}


def _feature_arrays(table: pa.Table, features: list[str]) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False).astype(float)
            if name in table.column_names else np.array([]) for name in features}


def training_values(ws: Workspace, lineage: dict[str, Any], features: list[str]) -> pa.Table:
    """The exact rows the model was trained on (Preprocess ``train/data.parquet``)."""
    preprocess = next(s for s in lineage["steps"] if s["name"] == "Preprocess")
    uri = next((u for u in preprocess["outputs"] if u.rstrip("/").endswith("/train")), None)
    path = ws.local_path(uri) / "data.parquet" if uri else None
    if path is None or not path.is_file():
        raise ReportError(f"the training split {uri} is missing; drift cannot be computed")
    return pq.read_table(path, columns=features)


def recent_values(ws: Workspace, start: date, end: date, features: list[str]) -> pa.Table:
    """Feature table rows with ``dt`` in [start, end]."""
    if not ws.features.is_dir():
        return pa.table({name: pa.array([], pa.float64()) for name in features})
    dataset = ds.dataset(ws.features, format="parquet", partitioning=ds.partitioning(
        pa.schema([("dt", pa.string())]), flavor="hive"))
    where = (ds.field("dt") >= start.isoformat()) & (ds.field("dt") <= end.isoformat())
    return dataset.to_table(columns=features, filter=where)


def _drift_section(ws: Workspace, lineage: dict[str, Any], start: date,
                   end: date) -> tuple[Section, list[FeatureDrift]]:
    features = list(lineage["feature_definitions"]["feature_columns"] or [])
    recent = recent_values(ws, start, end, features)
    title = SECTION_TITLES[6]
    if recent.num_rows == 0:
        return Section(title, [f"No feature rows between {start} and {end}: drift cannot be "
                               "measured for this period."]), []
    trained = training_values(ws, lineage, features)
    drift = feature_drift(_feature_arrays(trained, features), _feature_arrays(recent, features),
                          features)
    flagged = [d for d in drift if d.psi >= MODERATE]
    text = (f"PSI of {recent.num_rows:,} feature rows dated {start} to {end} against the "
            f"{trained.num_rows:,} training rows, 10 quantile bins of the training values "
            f"(missing values in their own bin). Bands: < {MODERATE} stable, {MODERATE}-"
            f"{SIGNIFICANT} moderate shift, >= {SIGNIFICANT} significant shift. "
            f"{len(flagged)} of {len(drift)} features shifted at least moderately.")
    table = Table("psi", "PSI per feature", ["feature", "psi", "band", "training_mean",
                                            "recent_mean"],
                  [[d.feature, d.psi, d.band, round(d.training_mean, 6),
                    round(d.recent_mean, 6)] for d in drift])
    chart = Chart("PSI per feature", "bar", [Series("psi", [d.feature for d in drift],
                                                    [d.psi for d in drift])],
                  x_label="feature", y_label="PSI",
                  guides=[(MODERATE, "0.1 moderate"), (SIGNIFICANT, "0.25 significant")])
    return Section(title, [text], [table], [chart]), drift


def _windows_section(lineage: dict[str, Any]) -> Section:
    rows = []
    for name, window in lineage["split"].items():
        rate = window["frauds"] / window["rows"] if window.get("rows") else None
        rows.append([name, window["start"], window["end"], window["days"], window["rows"],
                     window["frauds"], None if rate is None else round(rate, 6),
                     window.get("dropped_unlabelled", 0)])
    return Section(SECTION_TITLES[2], [
        "Chronological split of the feature table; the test window starts after a label-delay "
        "gap so no label unknown at scoring time leaks into training."],
        [Table("data_windows", "Train / validation / test windows",
               ["split", "start", "end", "days", "rows", "frauds", "fraud_rate",
                "dropped_unlabelled"], rows)])


def _features_section(lineage: dict[str, Any]) -> Section:
    described = {f.name: f.description for f in FEATURES}
    columns = lineage["feature_definitions"]["feature_columns"] or []
    definitions = lineage["feature_definitions"]
    text = (f"{len(columns)} features, definition version {definitions['trained_version']}"
            + ("" if definitions["current_matches"] else
               f" (the current definitions are {definitions['current_version']})") + ".")
    return Section(SECTION_TITLES[3], [text], [Table(
        "features", "Features", ["feature", "meaning"],
        [[name, described.get(name, "(no longer defined)")] for name in columns])])


def _performance_section(lineage: dict[str, Any], training: dict[str, Any]) -> Section:
    metrics = lineage["evaluation"].get("metrics", {})
    rows = [["train", "AUC-PR (average precision) at best iteration",
             training.get("train_aucpr_at_best")],
            ["validation", "AUC-PR (early-stopping metric)", training.get("validation_aucpr")],
            ["validation", "average precision (model selection objective)",
             training.get("validation_average_precision")]]
    rows = [row for row in rows if row[2] is not None]
    rows += [["test", name.replace("_", " "), value] for name, value in metrics.items()]
    params = training.get("hyperparameters", {})
    refit = training.get("refit")
    rounds = (f"refitted on train + validation ({refit['rows']} rows) for "
              f"{training.get('rounds_run', '?')} rounds, the selected trial's early-stopped count"
              if refit else f"best iteration {training.get('best_iteration', '?')} of "
              f"{training.get('rounds_run', '?')} rounds (early stopping)")
    text = (f"XGBoost {training.get('xgboost_version', '?')}, {rounds}; "
            f"objective {params.get('objective', '?')}, max depth "
            f"{params.get('max_depth', '?')}, learning rate {params.get('eta', '?')}. Test set: "
            f"{lineage['evaluation'].get('n_test')} transactions, "
            f"{lineage['evaluation'].get('n_fraud')} frauds.")
    return Section(SECTION_TITLES[4], [text], [Table(
        "metrics", "Metrics", ["split", "metric", "value"], rows)])


def _selection_section(training: dict[str, Any]) -> Section:
    """What model selection on the validation window chose, and the trials it compared."""
    tuning = training.get("tuning")
    if not tuning:
        return Section(SECTION_TITLES[10], [
            "Trained with fixed hyperparameters: no model selection ran for this model."])
    text = (f"{tuning.get('summary', '')}. Method: {tuning.get('method')}; objective "
            f"{tuning.get('objective')}; searched on {tuning.get('search_rows')}. The chosen "
            "values were then refitted on train + validation before the test window.")
    chosen = [[name, value] for name, value in (tuning.get("chosen") or {}).items()]
    trials = [[t["trial"], t["validation_average_precision"], t["rounds"],
               ", ".join(f"{k}={v}" for k, v in t["hyperparameters"].items())]
              for t in tuning.get("trials") or []]
    return Section(SECTION_TITLES[10], [text], [
        Table("chosen_hyperparameters", "Chosen hyperparameters", ["hyperparameter", "value"],
              chosen),
        Table("trials", "Trials (best first; trial 1 is the defaults)",
              ["trial", "validation average precision", "rounds", "hyperparameters"], trials)])


def _threshold_section(ws: Workspace, lineage: dict[str, Any]) -> Section:
    evaluation = lineage["evaluation"]
    document = {}
    if evaluation.get("present"):
        document = json.loads(ws.local_path(evaluation["uri"]).read_text(encoding="utf-8"))
    metrics = evaluation.get("metrics", {})
    threshold = evaluation.get("alert_threshold")
    # Formatted, never raw: a 16-digit fraction could pass for a card number.
    text = (f"Alerts are raised at score >= {format_cell(threshold)}: precision "
            f"{format_cell(metrics.get('precision_at_threshold'))}, recall "
            f"{format_cell(metrics.get('recall_at_threshold'))} on the test window "
            f"({format_cell(document.get('alerts_at_threshold'))} alerts).")
    curve = document.get("pr_curve") or {}
    charts = []
    if curve.get("precision"):
        step = max(1, len(curve["precision"]) // MAX_CURVE_POINTS)
        charts.append(Chart("Precision-recall curve (test window)", "line", [Series(
            "precision", curve["recall"][::step], curve["precision"][::step])],
            x_label="recall", y_label="precision"))
    return Section(SECTION_TITLES[5], [text], charts=charts)


def _limitations(lineage: dict[str, Any], drift: list[FeatureDrift]) -> Section:
    notes = [
        "Scores card-fraud risk of single card transactions; it is not an AML model and does "
        "not replace the CTR and structuring rules.",
        f"Labels arrive with a delay of {lineage['feature_definitions']['label_delay_days']}"
        " days (the model's split); recent frauds are under-represented in terminal risk "
        "features.",
        "Metrics come from one chronological test window; precision and recall vary with the "
        "fraud mix and volume of later periods.",
        "Fraud patterns not present in the training window (new attack types) may score low.",
    ]
    significant = [d.feature for d in drift if d.psi >= SIGNIFICANT]
    if significant:
        notes.append(f"Significant input drift in: {', '.join(significant)}; revalidate or "
                     "retrain before relying on the scores.")
    if not lineage["feature_definitions"]["current_matches"]:
        notes.append("The feature definitions changed since training: features computed today "
                     "differ from those the model learned.")
    if not lineage["feature_table"]["verified"]:
        notes.append("The feature table was rebuilt or changed after training; the partition "
                     "hashes below describe the current table, not necessarily the training "
                     "input.")
    return Section(SECTION_TITLES[7], notes)


def _approvals_section(lineage: dict[str, Any]) -> Section:
    """Every decision with the deciding account; a demo self-approval is called out first."""
    decisions = lineage["approvals"]
    demo = [d for d in decisions if d.get("Kind") == DEMO and d["ToStatus"] == APPROVED]
    notes = [f"{DEMO_NOTICE} ({d['Approver']}, {d['DecidedAt']}, inside `fraudops run`). "
             "This version has not passed four-eyes review." for d in demo]
    return Section(SECTION_TITLES[8], notes, [Table(
        "approvals", "Decisions",
        ["decided_at", "approver", "display_name", "kind", "from", "to", "reason"],
        [[d["DecidedAt"], d["Approver"], d.get("ApproverDisplayName") or "",
          d.get("Kind") or FOUR_EYES, d["FromStatus"], d["ToStatus"], d["Reason"]]
         for d in decisions],
        note=f"Registered by {lineage['model_package']['created_by']}; the four-eyes rule "
             "requires a different account to decide (approver is the deciding operating-"
             "system account; display_name is only a label typed beside it).")])


def _lineage_section(lineage: dict[str, Any]) -> Section:
    execution = lineage["execution"]
    steps = [[s["name"], s["type"], s["status"], s["cache_hit_from"] or "",
              "; ".join(f"{n} {h}" for c in s["code"] for n, h in c["files"].items()),
              all(c["matches_path"] for c in s["code"])] for s in lineage["steps"]]
    partitions = [[p["window"], p["dt"], f["file"], f["rows"], f["sha256"]]
                  for p in lineage["feature_table"]["partitions"] for f in p["files"]
                  if p["window"] != "unused"]
    curated = [[p["dt"], f["file"], f["rows"], f["sha256"], f.get("ingestion_id")]
               for p in lineage["curated"]["partitions"] for f in p["files"]]
    runs = [[r["ingestion_id"], r["started_at"], r["finished_at"], r["rows_curated"],
             len(r["sources"]), r["audit"]["seq"] if r["audit"] else None]
            for r in lineage["curated"]["ingestion_runs"]]
    deployments = [[d["finished_at"], d["status"], d["backend"], d["endpoint_url"],
                    d["message"]] for d in lineage["deployments"]]
    verified = lineage["feature_table"]["verified"]
    return Section(SECTION_TITLES[9], [
        f"Registered by pipeline execution {execution['id']} ({execution['pipeline']}), started "
        f"by {execution['started_by']} at {execution['start_time']}. Training partitions "
        + ("verified unchanged since the Preprocess step read them (row counts per window "
           "match the split and no file was rewritten after the step started)." if verified
           else "NOT verified: the feature table changed after training.")], [
        Table("lineage_steps", "Pipeline steps and code (SHA-256)",
              ["step", "type", "status", "cache_hit_from", "code_sha256", "code_matches_path"],
              steps),
        Table("lineage_feature_partitions", "Feature partitions read, by split window",
              ["window", "dt", "file", "rows", "sha256"], partitions),
        Table("lineage_curated_partitions", "Curated partitions behind them",
              ["dt", "file", "rows", "sha256", "ingestion_id"], curated),
        Table("lineage_ingestion_runs", "Ingestion runs",
              ["ingestion_id", "started_at", "finished_at", "rows_curated", "source_files",
               "audit_seq"], runs),
        Table("deployments", "Deployments", ["finished_at", "status", "backend", "endpoint",
                                              "message"], deployments),
    ])


def build_model_card(ws: Workspace, start: date, end: date, model_version: str | None = None,
                     group: str | None = None) -> Report:
    """The ``model-card`` report; drift is measured on feature rows dated [start, end]."""
    try:
        lineage = resolve_lineage(ws, model_version, group)
    except LineageError as exc:
        raise ReportError(str(exc)) from exc
    package = lineage["model_package"]
    training = _training_metadata(ws, package["model_data"])
    drift_section, drift = _drift_section(ws, lineage, start, end)
    summary_rows = [["model package", package["arn"]], ["status", package["status"]],
                    ["registered", f"{package['created']} by {package['created_by']}"],
                    ["model artifact", package["model_data"]],
                    ["feature set version", lineage["feature_definitions"]["trained_version"]],
                    ["alert threshold", lineage["evaluation"].get("alert_threshold")]]
    sections = [
        Section(SECTION_TITLES[0], [], [Table("summary", "Model", ["item", "value"],
                                              summary_rows)]),
        Section(SECTION_TITLES[1], [
            "Purpose: score each card transaction's probability of fraud so that investigators "
            "review the riskiest first and the stream scorer can alert in real time.",
            "Intended use: ranking card transactions for review and raising alerts at the "
            "approved threshold; every alert is reviewed by a person before any action against "
            "a customer. Not for credit decisions, AML monitoring or automated blocking "
            "without review.",
            "Users: fraud analysts and compliance officers (alerts, cases), model risk "
            "management (this report)."]),
        _windows_section(lineage),
        _features_section(lineage),
        _performance_section(lineage, training),
        _selection_section(training),
        _threshold_section(ws, lineage),
        drift_section,
        _limitations(lineage, drift),
        _approvals_section(lineage),
        _lineage_section(lineage),
    ]
    return Report(
        name="model-card",
        title=f"Model card and validation report: {package['group']} v{package['version']}",
        period_start=start, period_end=end, sections=sections,
        data={"model_package": package, "training": training,
              "drift": [d.__dict__ for d in drift], "lineage": lineage},
        summary={"model_package": package["arn"], "version": package["version"],
                 "features_moderate_drift": sum(MODERATE <= d.psi < SIGNIFICANT for d in drift),
                 "features_significant_drift": sum(d.psi >= SIGNIFICANT for d in drift),
                 "lineage_verified": lineage["feature_table"]["verified"]},
    )
