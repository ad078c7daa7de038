"""The fraud-operations dashboard: one self-contained, interactive HTML file (Plotly).

Everything on it comes from the named Athena queries (run locally on the lake)
and the approved model's ``evaluation.json``, so it shows what the QuickSight
dashboard shows on AWS. plotly.js is inlined, so the file works offline and can
be mailed, archived with a report or left on a wall screen.

The page carries a small self-check: it records JavaScript errors and the
number of points each chart drew into ``<pre id="dashboard-selfcheck">``, which
the headless-browser test reads back.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pyarrow as pa
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from pipelines.analytics.exports import export_queue
from pipelines.analytics.runner import run_named_query
from pipelines.core.fileio import write_text_atomically
from pipelines.core.workspace import Workspace
from pipelines.data.lake.named_queries import NamedQueryError
from pipelines.data.lake.query import QueryError

TOP_N = 15
MS_PER_DAY = 86_400_000
COLOURS = {
    "bg": "#0b1220", "panel": "#111a2e", "grid": "#22304d", "text": "#e6edf7", "muted": "#8fa3c0",
    "blue": "#4ea1ff", "red": "#ff5d6c", "amber": "#ffb547", "green": "#3ddc97",
    "violet": "#a78bfa", "teal": "#2dd4bf",
}
SEQUENCE = [COLOURS[c] for c in ("blue", "red", "amber", "green", "violet", "teal")]


@dataclass
class Panel:
    """One chart on the grid; ``figure`` is None when its data is not there yet."""

    key: str
    title: str
    subtitle: str
    figure: go.Figure | None
    missing: str = ""
    wide: bool = False


@dataclass
class DashboardData:
    """Query results by name (None when the query could not run) and the evaluation."""

    results: dict[str, pa.Table | None]
    problems: dict[str, str]
    evaluation: dict[str, Any] | None
    evaluation_source: str
    timings: dict[str, float] = field(default_factory=dict)

    def rows(self, name: str) -> list[dict[str, Any]]:
        table = self.results.get(name)
        return [] if table is None else table.to_pylist()


@dataclass(frozen=True)
class DashboardOptions:
    """The knobs analysts change: capacity k and which terminals count as ranked."""

    capacity: int = 100  # investigators' daily capacity k, as in card precision@k
    min_terminal_transactions: int = 20  # fewer makes a terminal's fraud rate noise

    def query_params(self) -> dict[str, dict[str, object]]:
        return {
            "riskiest_terminals": {"top_n": TOP_N,
                                   "min_transactions": self.min_terminal_transactions},
            "alert_volume_vs_capacity": {"capacity": self.capacity},
        }


# --- data ---------------------------------------------------------------------


def find_evaluation(ws: Workspace) -> Path | None:
    """``evaluation.json`` of the newest approved model (else the newest registered one)."""
    if not ws.registry_db.exists():
        return None
    from pipelines.model.registry.local import APPROVED, LocalModelRegistry

    registry = LocalModelRegistry.for_workspace(ws)
    packages = registry.list_model_packages()["ModelPackageSummaryList"]
    packages.sort(key=lambda p: (p["ModelApprovalStatus"] == APPROVED, p["CreationTime"]),
                  reverse=True)
    for summary in packages:
        package = registry.describe_model_package(summary["ModelPackageArn"])
        uri = (package.get("ModelMetrics") or {}).get("ModelQuality", {}).get(
            "Statistics", {}).get("S3Uri")
        if uri and ws.local_path(uri).is_file():
            return ws.local_path(uri)
    return None


def collect(
    ws: Workspace, evaluation_path: Path | None = None, options: DashboardOptions | None = None
) -> DashboardData:
    """Run every named query the dashboard shows; a missing table is reported, not fatal."""
    from pipelines.data.lake.named_queries import load_library

    params = (options or DashboardOptions()).query_params()

    if ws.cases_db.exists():
        export_queue(ws)  # the queue changes as cases are worked: show its current state
    results: dict[str, pa.Table | None] = {}
    problems: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in load_library():
        started = time.perf_counter()
        try:
            results[name] = run_named_query(ws, name, params.get(name))
        except (QueryError, NamedQueryError) as exc:
            results[name], problems[name] = None, str(exc)
        timings[name] = time.perf_counter() - started
    path = evaluation_path or find_evaluation(ws)
    evaluation = json.loads(path.read_text(encoding="utf-8")) if path else None
    return DashboardData(results, problems, evaluation, str(path or ""), timings)


# --- figures ------------------------------------------------------------------


def _style(fig: go.Figure, height: int = 330) -> go.Figure:
    fig.update_layout(
        template="plotly_dark", height=height, margin={"l": 56, "r": 24, "t": 16, "b": 44},
        paper_bgcolor=COLOURS["panel"], plot_bgcolor=COLOURS["panel"],
        font={"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 12,
              "color": COLOURS["text"]},
        legend={"orientation": "h", "y": 1.12, "x": 0, "bgcolor": "rgba(0,0,0,0)"},
        colorway=SEQUENCE, hoverlabel={"font_size": 12},
    )
    fig.update_xaxes(gridcolor=COLOURS["grid"], zeroline=False)
    fig.update_yaxes(gridcolor=COLOURS["grid"], zeroline=False)
    return fig


def _day_axis(fig: go.Figure, days: list[str]) -> None:
    """Daily ticks, padded by a day each side: a one-day series must not zoom to milliseconds."""
    first, last = date.fromisoformat(min(days)), date.fromisoformat(max(days))
    fig.update_xaxes(type="date", tickformat="%b %d",
                     range=[str(first - timedelta(days=1)), str(last + timedelta(days=1))])
    if (last - first).days <= 14:
        fig.update_xaxes(dtick=MS_PER_DAY)  # one tick per day, not every six hours
    # With an explicit range Plotly sizes a lone bar to nothing: give bars most of a day.
    fig.update_traces(width=0.8 * MS_PER_DAY, selector={"type": "bar"})
    fig.update_yaxes(rangemode="tozero")


def volumes_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    days = [r["day"] for r in rows]
    fig.add_bar(x=days, y=[r["transactions"] for r in rows], name="transactions",
                marker_color=COLOURS["blue"], opacity=0.75)
    fig.add_scatter(x=days, y=[r["fraud_rate"] for r in rows], name="fraud rate",
                    mode="lines+markers", line={"color": COLOURS["red"], "width": 2.5},
                    secondary_y=True)
    fig.update_yaxes(title_text="transactions / day", secondary_y=False)
    fig.update_yaxes(title_text="fraud rate", tickformat=".1%", secondary_y=True,
                     showgrid=False)
    _day_axis(fig, days)
    return _style(fig)


def alert_rate_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    days = [r["day"] for r in rows]
    fig.add_bar(x=days, y=[r["alerts"] for r in rows], name="alerts",
                marker_color=COLOURS["amber"])
    fig.add_scatter(x=days, y=[r["alert_rate"] for r in rows], name="alert rate",
                    mode="lines+markers", line={"color": COLOURS["teal"], "width": 2.5},
                    secondary_y=True)
    fig.update_yaxes(title_text="alerts / day", secondary_y=False)
    fig.update_yaxes(title_text="share of scored", tickformat=".2%", secondary_y=True,
                     showgrid=False)
    _day_axis(fig, days)
    return _style(fig)


def capacity_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    days = [r["day"] for r in rows]
    fig.add_bar(x=days, y=[r["cases_opened"] - r["high_severity"] for r in rows],
                name="medium", marker_color=COLOURS["amber"])
    fig.add_bar(x=days, y=[r["high_severity"] for r in rows], name="high",
                marker_color=COLOURS["red"])
    # The capacity line spans the padded axis, so it shows even for a single day.
    span = [str(date.fromisoformat(min(days)) - timedelta(days=1)),
            str(date.fromisoformat(max(days)) + timedelta(days=1))]
    fig.add_scatter(x=span, y=[rows[0]["capacity"]] * 2, name="capacity (k)",
                    mode="lines", line={"color": COLOURS["green"], "dash": "dash", "width": 2})
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="cases opened / day")
    _day_axis(fig, days)
    return _style(fig)


def score_distribution_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    for version in sorted({r["model_version"] for r in rows}):
        mine = [r for r in rows if r["model_version"] == version]
        fig.add_bar(x=[(r["bin_low"] + r["bin_high"]) / 2 for r in mine],
                    y=[r["transactions"] for r in mine], name=f"model v{version}",
                    width=[r["bin_high"] - r["bin_low"] for r in mine],
                    customdata=[[r["bin_low"], r["bin_high"], r["alerts"]] for r in mine],
                    hovertemplate="score %{customdata[0]:.2f}-%{customdata[1]:.2f}<br>"
                                  "%{y:,} transactions, %{customdata[2]:,} alerts<extra></extra>")
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="score", range=[0, 1])
    fig.update_yaxes(title_text="transactions (log scale)", type="log", dtick=1)
    return _style(fig)


def pr_curve_figure(evaluation: dict[str, Any]) -> go.Figure:
    curve = evaluation["pr_curve"]
    metrics = evaluation["binary_classification_metrics"]
    fig = go.Figure()
    fig.add_scatter(x=curve["recall"], y=curve["precision"], mode="lines", name="PR curve",
                    line={"color": COLOURS["blue"], "width": 2.5}, customdata=curve["thresholds"],
                    hovertemplate="recall %{x:.2f}, precision %{y:.2f}<br>"
                                  "threshold %{customdata:.3f}<extra></extra>")
    fig.add_scatter(
        x=[metrics["recall_at_threshold"]["value"]], y=[metrics["precision_at_threshold"]["value"]],
        mode="markers+text", name=f"alert threshold {evaluation.get('alert_threshold', '')}",
        marker={"color": COLOURS["red"], "size": 12, "symbol": "diamond"},
        text=["threshold"], textposition="top right")
    fig.update_xaxes(title_text="recall", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title_text="precision", range=[0, 1.05], tickformat=".0%")
    return _style(fig)


def card_precision_figure(evaluation: dict[str, Any]) -> go.Figure:
    per_day = evaluation["card_precision_at_k_per_day"]
    fig = go.Figure()
    days = [d["day"] for d in per_day]
    fig.add_bar(x=days, y=[d["precision"] for d in per_day], name="CP@k",
                marker_color=COLOURS["violet"])
    fig.add_scatter(x=days, y=[d["best_possible"] for d in per_day], name="best possible",
                    mode="lines+markers", line={"color": COLOURS["green"], "dash": "dot"})
    fig.update_yaxes(title_text="card precision@k", tickformat=".0%")
    _day_axis(fig, days)
    return _style(fig)


def ranking_figure(rows: list[dict[str, Any]], label: str, colour: str) -> go.Figure:
    """Horizontal bars of fraud rate, riskiest on top."""
    rows = [r for r in rows if r["fraud_rate"] is not None][:TOP_N][::-1]
    fig = go.Figure()
    fig.add_bar(
        y=[str(r[label]) for r in rows], x=[r["fraud_rate"] for r in rows], orientation="h",
        marker_color=colour, name="fraud rate",
        customdata=[[r["transactions"], r["frauds"], r["fraud_amount"]] for r in rows],
        hovertemplate="%{y}: %{x:.1%} fraud<br>%{customdata[1]:,} of %{customdata[0]:,} "
                      "transactions, %{customdata[2]:,.0f} defrauded<extra></extra>")
    fig.update_xaxes(title_text="fraud rate", tickformat=".1%")
    fig.update_yaxes(type="category")
    return _style(fig, height=max(330, 22 * len(rows) + 80))


def queue_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    statuses = ["open", "in_review", "closed"]
    colours = {"high": COLOURS["red"], "medium": COLOURS["amber"]}
    for severity in sorted({r["severity"] for r in rows}):
        counts = {r["status"]: r["cases"] for r in rows if r["severity"] == severity}
        fig.add_bar(x=statuses, y=[counts.get(s, 0) for s in statuses], name=severity,
                    marker_color=colours.get(severity, COLOURS["blue"]))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="cases")
    return _style(fig)


def quarantine_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    for reason in sorted({r["reason"] for r in rows}):
        mine = [r for r in rows if r["reason"] == reason]
        fig.add_bar(x=[r["day"] for r in mine], y=[r["quarantined_rows"] for r in mine],
                    name=reason)
    fig.update_layout(barmode="stack", legend={"y": 1.25})
    fig.update_yaxes(title_text="quarantined rows")
    _day_axis(fig, [r["day"] for r in rows])
    return _style(fig)


# --- panels and tiles -----------------------------------------------------------


def _panel(data: DashboardData, key: str, title: str, subtitle: str,
           build: Callable[[list[dict[str, Any]]], go.Figure], wide: bool = False) -> Panel:
    rows = data.rows(key)
    if not rows:
        reason = data.problems.get(key, "the query returned no rows for this period")
        return Panel(key, title, subtitle, None, missing=reason, wide=wide)
    return Panel(key, title, subtitle, build(rows), wide=wide)


def _evaluation_panel(data: DashboardData, key: str, title: str, subtitle: str,
                      build: Callable[[dict[str, Any]], go.Figure]) -> Panel:
    if not data.evaluation:
        return Panel(key, title, subtitle, None,
                     missing="no evaluation.json: run the pipeline (fraudops run) to train one")
    return Panel(key, title, subtitle, build(data.evaluation))


def build_panels(data: DashboardData, options: DashboardOptions | None = None) -> list[Panel]:
    """Every chart of the grid, in reading order."""
    options = options or DashboardOptions()
    return [
        _panel(data, "fraud_rate_by_day", "Transaction volume and fraud rate",
               "transactions per UTC day (bars) and labelled fraud rate (line)", volumes_figure,
               wide=True),
        _panel(data, "alert_rate_by_day", "Alerts raised by batch scoring",
               "scores at or above the model's alert threshold, per day", alert_rate_figure),
        _panel(data, "alert_volume_vs_capacity", "Cases opened vs investigator capacity",
               f"cases opened per day by severity; capacity k = {options.capacity}/day",
               capacity_figure),
        _evaluation_panel(data, "pr_curve", "Model performance: precision-recall",
                          "held-out test window; diamond = the alert threshold", pr_curve_figure),
        _evaluation_panel(data, "card_precision", "Card precision@k per test day",
                          "share of fraudulent cards among the day's top-k cards",
                          card_precision_figure),
        _panel(data, "score_distribution_by_model_version", "Score distribution",
               "scored transactions per score bin and model version", score_distribution_figure),
        _panel(data, "riskiest_terminals", f"Top {TOP_N} risky terminals",
               "fraud rate among terminals with at least "
               f"{options.min_terminal_transactions} transactions",
               lambda rows: ranking_figure(rows, "terminal_id", COLOURS["red"])),
        _panel(data, "fraud_rate_by_merchant_category", "Fraud rate by merchant category",
               "MCC; riskiest on top",
               lambda rows: ranking_figure(rows, "merchant_category", COLOURS["amber"])),
        _panel(data, "alert_queue_status", "Alert queue status",
               "cases by status and severity", queue_figure),
        _panel(data, "quarantine_reasons_over_time", "ETL quarantine reasons",
               "rows rejected by ingest validation per day, by reason", quarantine_figure,
               wide=True),
    ]


def _first(rows: list[dict[str, Any]], **match: object) -> dict[str, Any]:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), {})


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def kpi_tiles(data: DashboardData) -> list[tuple[str, str, str]]:
    """(label, value, footnote) for the tiles across the top."""
    days = data.rows("fraud_rate_by_day")
    transactions = sum(r["transactions"] for r in days)
    frauds = sum(r["frauds"] for r in days)
    alerts = sum(r["alerts"] for r in data.rows("alert_rate_by_day"))
    queue = data.rows("alert_queue_status")
    open_cases = sum(r["cases"] for r in queue if r["status"] != "closed")
    precision = _first(data.rows("alert_precision"), severity="all").get("precision")
    quarantined = sum(r["quarantined_rows"] for r in data.rows("quarantine_reasons_over_time"))
    tiles = [
        ("Transactions", f"{transactions:,}", f"{len(days)} days in the lake"),
        ("Fraud rate", _pct(frauds / transactions if transactions else None, 2),
         f"{frauds:,} labelled frauds"),
        ("Alerts raised", f"{alerts:,}", "batch scoring"),
        ("Open cases", f"{open_cases:,}", "open or in review"),
        ("Alert precision", _pct(precision), "closed cases confirmed fraud"),
        ("Quarantined rows", f"{quarantined:,}", "rejected by ETL validation"),
    ]
    if data.evaluation:
        metrics = data.evaluation["binary_classification_metrics"]
        k = metrics["card_precision_at_k"]["k"]
        tiles += [
            ("Average precision", f"{metrics['average_precision']['value']:.3f}",
             f"ROC AUC {metrics['roc_auc']['value']:.3f}"),
            (f"Card precision@{k}", _pct(metrics["card_precision_at_k"]["value"]),
             f"best possible {_pct(metrics['card_precision_at_k']['best_possible'])}"),
            ("Precision / recall", f"{_pct(metrics['precision_at_threshold']['value'], 0)} / "
             f"{_pct(metrics['recall_at_threshold']['value'], 0)}",
             f"at threshold {data.evaluation.get('alert_threshold')}"),
        ]
    return tiles


# --- HTML -----------------------------------------------------------------------

_CSS = """
* { box-sizing: border-box; }
body { margin: 0; background: %(bg)s; color: %(text)s;
       font-family: Inter, "Segoe UI", Helvetica, Arial, sans-serif; }
header { display: flex; justify-content: space-between; align-items: baseline;
         padding: 20px 28px 8px; }
header h1 { margin: 0; font-size: 24px; font-weight: 650; letter-spacing: .2px; }
header .meta { color: %(muted)s; font-size: 13px; text-align: right; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
         gap: 12px; padding: 8px 28px 4px; }
.tile { background: %(panel)s; border: 1px solid %(grid)s; border-radius: 10px;
        padding: 12px 16px; }
.tile .label { color: %(muted)s; font-size: 12px; text-transform: uppercase;
               letter-spacing: .6px; }
.tile .value { font-size: 24px; font-weight: 650; margin-top: 4px; }
.tile .foot { color: %(muted)s; font-size: 12px; margin-top: 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
        gap: 14px; padding: 14px 28px 28px; }
.panel { background: %(panel)s; border: 1px solid %(grid)s; border-radius: 10px;
         padding: 12px 12px 4px; min-width: 0; }
.panel.wide { grid-column: 1 / -1; }
.panel h2 { margin: 2px 6px 0; font-size: 15px; font-weight: 600; }
.panel .sub { margin: 2px 6px 6px; color: %(muted)s; font-size: 12px; }
.missing { height: 200px; display: flex; align-items: center; justify-content: center;
           color: %(muted)s; font-size: 13px; text-align: center; padding: 0 24px; }
#dashboard-selfcheck { display: none; }
"""

_SELF_CHECK = """
window.__dashboardErrors = window.__dashboardErrors || [];
window.addEventListener('error', function (e) {
  window.__dashboardErrors.push(String(e.message || e.type));
});
window.addEventListener('load', function () {
  var charts = [];
  document.querySelectorAll('.js-plotly-plot').forEach(function (el) {
    var points = 0;
    (el.data || []).forEach(function (trace) {
      var axis = trace.x || trace.y || trace.values || [];
      points += axis.length || 0;
    });
    var drawn = el.querySelectorAll('.point, .trace path, .bars path').length;
    charts.push({id: el.id, points: points, drawn: drawn});
  });
  document.getElementById('dashboard-selfcheck').textContent =
    JSON.stringify({errors: window.__dashboardErrors, charts: charts});
});
"""


def _tile_html(label: str, value: str, foot: str) -> str:
    return (f'<div class="tile"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div>'
            f'<div class="foot">{html.escape(foot)}</div></div>')


def _panel_html(panel: Panel) -> str:
    if panel.figure is None:
        body = f'<div class="missing">No data yet: {html.escape(panel.missing)}</div>'
    else:
        body = panel.figure.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"chart-{panel.key}",
            config={"displayModeBar": False, "responsive": True})
    css = "panel wide" if panel.wide else "panel"
    return (f'<section class="{css}"><h2>{html.escape(panel.title)}</h2>'
            f'<div class="sub">{html.escape(panel.subtitle)}</div>{body}</section>')


def render_html(
    data: DashboardData, panels: list[Panel], workspace: Workspace, generated_at: datetime
) -> str:
    """The whole page as one string (plotly.js inlined)."""
    tiles = "".join(_tile_html(*tile) for tile in kpi_tiles(data))
    window = data.rows("fraud_rate_by_day")
    period = f"{window[0]['day']} to {window[-1]['day']}" if window else "no transactions yet"
    meta = (f"data {html.escape(period)} · generated {generated_at:%Y-%m-%d %H:%M} UTC<br>"
            f"workspace {html.escape(str(workspace.root))}")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Fraud operations dashboard</title>"
        f"<style>{_CSS % COLOURS}</style>"
        f"<script>{_SELF_CHECK}</script>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<header><h1>Fraud operations</h1><div class=\"meta\">{meta}</div></header>"
        f"<div class=\"tiles\">{tiles}</div>"
        f"<div class=\"grid\">{''.join(_panel_html(p) for p in panels)}</div>"
        "<pre id=\"dashboard-selfcheck\"></pre></body></html>"
    )


@dataclass(frozen=True)
class RenderSummary:
    """Where the dashboard went and what it holds."""

    path: Path
    charts: int
    missing: dict[str, str]
    seconds: float
    evaluation: str


def render_dashboard(
    ws: Workspace,
    out: Path,
    evaluation_path: Path | None = None,
    options: DashboardOptions | None = None,
) -> RenderSummary:
    """Query the lake, build the page and write it atomically to ``out``."""
    started = time.perf_counter()
    data = collect(ws, evaluation_path, options)
    panels = build_panels(data, options)
    page = render_html(data, panels, ws, datetime.now(UTC))
    write_text_atomically(out, page)
    return RenderSummary(
        path=out,
        charts=sum(p.figure is not None for p in panels),
        missing={p.title: p.missing for p in panels if p.figure is None},
        seconds=time.perf_counter() - started,
        evaluation=data.evaluation_source,
    )
