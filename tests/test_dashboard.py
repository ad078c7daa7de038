"""The dashboard: every panel from the named queries, offline HTML, no JS errors in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_named_queries import build_crafted_lake

from pipelines.analytics.dashboard import (
    DashboardOptions,
    build_panels,
    collect,
    render_dashboard,
)
from pipelines.cli.main import main as cli_main
from pipelines.core.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=8000"]
EXPECTED_CHARTS = {
    "fraud_rate_by_day", "alert_rate_by_day", "alert_volume_vs_capacity", "pr_curve",
    "card_precision", "score_distribution_by_model_version", "riskiest_terminals",
    "fraud_rate_by_merchant_category", "alert_queue_status", "quarantine_reasons_over_time",
}


def _evaluation(path: Path) -> Path:
    """An evaluation.json in processing/evaluate.py's layout."""
    report = {
        "binary_classification_metrics": {
            "average_precision": {"value": 0.71}, "roc_auc": {"value": 0.97},
            "card_precision_at_k": {"value": 0.25, "k": 2, "best_possible": 0.5},
            "precision_at_threshold": {"value": 0.8, "threshold": 0.5},
            "recall_at_threshold": {"value": 0.4, "threshold": 0.5},
        },
        "alert_threshold": 0.5,
        "card_precision_at_k_per_day": [
            {"day": "2024-03-01", "precision": 0.5, "best_possible": 1.0},
            {"day": "2024-03-02", "precision": 0.0, "best_possible": 0.0},
        ],
        "pr_curve": {"precision": [0.2, 0.6, 1.0], "recall": [1.0, 0.5, 0.1],
                     "thresholds": [0.1, 0.5, 0.9]},
    }
    path.write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dashboard")
    workspace = build_crafted_lake(Workspace.open(tmp_path / "ws"))
    out = tmp_path / "out" / "dashboard.html"
    options = DashboardOptions(capacity=2, min_terminal_transactions=2)
    summary = render_dashboard(workspace, out, _evaluation(tmp_path / "evaluation.json"), options)
    return summary, out


def test_every_panel_has_data_and_the_page_is_self_contained(rendered):
    summary, out = rendered
    assert summary.missing == {} and summary.charts == len(EXPECTED_CHARTS)
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inlined: works offline
    assert "plotly.js v" in page  # the library itself is in the file
    for chart in EXPECTED_CHARTS:
        assert f'id="chart-{chart}"' in page
    assert [p.name for p in out.parent.iterdir()] == ["dashboard.html"]  # no temp file left


def test_kpi_tiles_show_the_lake_figures(rendered):
    page = rendered[1].read_text(encoding="utf-8")
    tiles = dict(re.findall(r'<div class="label">([^<]+)</div><div class="value">([^<]+)<', page))
    assert tiles["Transactions"] == "10"
    assert tiles["Fraud rate"] == "40.00%"  # 4 frauds among the 10 transactions
    assert tiles["Alerts raised"] == "4"
    assert tiles["Open cases"] == "1"  # one in review; two closed
    assert tiles["Alert precision"] == "50.0%"
    assert tiles["Quarantined rows"] == "4"
    assert tiles["Average precision"] == "0.710"
    assert tiles["Card precision@2"] == "25.0%"


def test_missing_zones_are_explained_not_fatal(workspace, tmp_path):
    data = collect(workspace)
    panels = {p.key: p for p in build_panels(data)}
    assert all(p.figure is None for p in panels.values())
    assert "fraudops ingest" in panels["fraud_rate_by_day"].missing
    assert "fraudops run" in panels["pr_curve"].missing
    assert cli_main(["dashboard", "--workdir", str(workspace.root),
                     "--out", str(tmp_path / "d.html")]) == 0
    assert "No data yet" in (tmp_path / "d.html").read_text(encoding="utf-8")


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed: `make system-deps` installs it")
    return path


@pytest.mark.slow
def test_dashboard_loads_in_headless_chromium_without_errors(rendered, tmp_path):
    chromium = _chromium()
    url = rendered[1].as_uri()
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True)
    check = re.search(r'<pre id="dashboard-selfcheck">([^<]*)</pre>', dom.stdout)
    assert check and check.group(1), "the page's self-check did not run"
    result = json.loads(check.group(1))
    assert result["errors"] == []
    assert "Uncaught" not in dom.stderr  # console errors Chromium logs to stderr
    charts = {c["id"].removeprefix("chart-"): c for c in result["charts"]}
    assert set(charts) == EXPECTED_CHARTS
    empty = [name for name, chart in charts.items() if chart["points"] == 0 or chart["drawn"] == 0]
    assert empty == []

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}",
         "--window-size=1600,3000", f"--screenshot={screenshot}", url],
        capture_output=True, text=True, timeout=120, check=True)
    assert screenshot.stat().st_size > 50_000  # a drawn page, not a blank one
