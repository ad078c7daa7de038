"""Model quality on third-party-shaped data and on our generator, the way the field measures it.

Runs ``fraudops run`` (the whole workflow, chronological train / label-delay /
test protocol, default features and XGBoost settings) in a fresh workspace per
dataset and seed, and reports the Evaluate step's test metrics: average
precision, ROC AUC, card precision@k and the best card precision@k a perfect
ranking could reach on that test window (small populations cap it far below 1).

Datasets: ``ours`` (``fraudops generate``) and the layouts of
``tests/fixtures/third_party.py`` (``handbook``: Le Borgne et al.'s simulator;
``ieee``: IEEE-CIS-like, epoch seconds; ``minimal``: required columns + label),
each given to ``fraudops run --input ... --column-map ...``; and the layouts with the
user's own feature columns (``anonymised``: V1..V28-like components, no ids, relative
time over two days; ``categorical``: device and merchant category columns).

Beside each run, ``plain XGBoost AP`` is the usual baseline on the same split:
XGBoost with its default settings on the curated columns as they are (amount,
hour of day, the user's feature columns), trained on the run's train and
validation windows and scored on its test window. On the id-less layout this is
the "plain XGBoost on the same chronological split" a data scientist compares
with; on the others it shows what the entity features add.

``python -m bench --only quality --size 40000`` runs seed 1 of each dataset;
``python -m bench.quality --size 40000 --seeds 1 2 3`` reports medians over seeds;
``--tuning-budgets 0 8`` compares model selection off (the defaults, refitted)
with 8 candidates, and reports the seconds the Tune step and the whole run took.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench._harness import Result

AREA = "quality"
REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_FILE = REPO_ROOT / "tests" / "fixtures" / "third_party.py"
OURS = "ours"
METRICS = ("average precision", "plain XGBoost AP", "ROC AUC", "card precision@k",
           "card precision@k best possible", "test fraud rate", "tuning seconds", "run seconds")


def fixtures() -> ModuleType:
    """The third-party generators, loaded by path (``tests`` is not an installed package)."""
    name = "fraudops_third_party_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while decorating
        spec.loader.exec_module(module)
    return sys.modules[name]


def layouts() -> dict:
    return {**fixtures().LAYOUTS, **fixtures().USER_FEATURE_LAYOUTS}


def dataset_names() -> list[str]:
    return [OURS, *layouts()]


def days_for(size: int, name: str = OURS) -> int:
    """Enough days for 30-day customer windows plus train / delay / test at any size
    (the anonymised layout is two days long, as the public data it mimics)."""
    if name == "anonymised":
        return 2
    return 50 if size <= 200_000 else 90


def run_dataset(name: str, size: int, seed: int, workdir: Path,
                tuning_budget: int | None = None) -> dict[str, float]:
    """One ``fraudops run`` in a fresh workspace; returns the test metrics and timings."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = [sys.executable, "-m", "pipelines.cli.main", "run", "--workdir", str(workdir / "ws")]
    if tuning_budget is not None:
        command += ["--tuning-budget", str(tuning_budget)]
    if name == OURS:
        command += ["--transactions", str(size), "--days", str(days_for(size, name)),
                    "--seed", str(seed), "--malformed-rate", "0"]
    else:
        layout = layouts()[name]
        path, _ = layout.write(workdir / "input", rows=size, days=days_for(size, name),
                               seed=seed)
        command += ["--input", str(path), "--column-map", str(layout.column_map_path)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                   cwd=REPO_ROOT)
    finally:
        _stop_endpoint(workdir / "ws")
    seconds = time.perf_counter() - started
    evaluations = sorted((workdir / "ws").rglob("evaluation.json"))
    if not evaluations:  # a gate failure still leaves the evaluation; anything else is fatal
        raise RuntimeError(f"fraudops run on {name} (seed {seed}) failed:\n"
                           f"{completed.stdout[-3000:]}{completed.stderr[-2000:]}")
    evaluation = json.loads(evaluations[-1].read_text())
    return {**metrics_of(evaluation),
            "plain XGBoost AP": plain_xgboost_ap(workdir / "ws", evaluation["split"]),
            "tuning seconds": _step_seconds(workdir / "ws", "Tune"), "run seconds": seconds}


def plain_xgboost_ap(workspace_root: Path, split: dict) -> float:
    """AP of XGBoost's defaults on the curated columns as they are, on the run's windows.

    Train = the run's train and validation windows, test = its test window (the
    label-delay gap left out, as in the run), so the two figures compare models,
    not splits.
    """
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import xgboost as xgb
    from sklearn.metrics import average_precision_score

    from pipelines.core.schema import CURATED_SCHEMA
    from pipelines.core.workspace import Workspace

    curated = ds.dataset(Workspace.open(workspace_root).curated, format="parquet",
                         partitioning="hive").to_table()
    built_in = set(CURATED_SCHEMA.names)
    user_columns = [name for name in curated.column_names
                    if name not in built_in and name != "dt"]
    columns = [curated["amount"].cast("float64").to_numpy(zero_copy_only=False),
               pc.hour(curated["timestamp"]).to_numpy(zero_copy_only=False).astype(float)]
    for name in user_columns:
        values = curated[name]
        if not (values.type.equals("double") or values.type.equals("float")):
            values = pc.dictionary_encode(values).indices  # categories as codes
        columns.append(values.cast("float64").to_numpy(zero_copy_only=False))
    matrix = np.column_stack(columns)
    labels = curated["is_fraud"].to_numpy(zero_copy_only=False)
    times = curated["timestamp"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    windows = split["windows"]

    def within(start: str, end: str) -> np.ndarray:
        return (times >= np.datetime64(start)) & (times < np.datetime64(end))

    train = within(windows["train"]["start_time"], windows["validation"]["end_time"])
    test = within(windows["test"]["start_time"], windows["test"]["end_time"])
    if labels[test].sum() == 0 or labels[train].sum() == 0:
        return math.nan
    model = xgb.XGBClassifier(n_jobs=2).fit(matrix[train], labels[train])
    return float(average_precision_score(labels[test], model.predict_proba(matrix[test])[:, 1]))


def _step_seconds(workspace_root: Path, step: str) -> float:
    """How long a step of the (only) pipeline execution took, from the executor's records."""
    from datetime import datetime

    from pipelines.core.workspace import Workspace
    from pipelines.model.executor.store import ExecutionStore

    store = ExecutionStore(Workspace.open(workspace_root).executions)
    try:
        [summary] = store.list_pipeline_executions()["PipelineExecutionSummaries"]
        row = next(r for r in store.step_rows(summary["PipelineExecutionId"])
                   if r["step_name"] == step)
    finally:
        store.close()
    return (datetime.fromisoformat(row["end_time"])
            - datetime.fromisoformat(row["start_time"])).total_seconds()


def metrics_of(evaluation: dict) -> dict[str, float]:
    """The figures this benchmark reports, from an ``evaluation.json``."""
    metrics = evaluation["binary_classification_metrics"]
    card = metrics["card_precision_at_k"]
    return {
        "average precision": metrics["average_precision"]["value"],
        "ROC AUC": metrics["roc_auc"]["value"],
        "card precision@k": card["value"] if card["value"] is not None else math.nan,
        "card precision@k best possible": card.get("best_possible") or math.nan,
        "test fraud rate": evaluation["n_fraud"] / evaluation["n_test"],
    }


def _stop_endpoint(workspace_root: Path) -> None:
    from pipelines.core.workspace import Workspace
    from pipelines.serving.deploy.local import read_endpoint_state, stop_endpoint_process

    if not workspace_root.exists():
        return
    state = read_endpoint_state(Workspace.open(workspace_root)) or {}
    if state.get("pid"):
        stop_endpoint_process(int(state["pid"]))


def measure(size: int, workdir: Path, seeds: list[int], names: list[str],
            budgets: tuple[int | None, ...] = (None,)) -> list[Result]:
    """Median of each metric over ``seeds``, per dataset (and tuning budget, if given)."""
    results: list[Result] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("fraudops run per dataset and seed",
                                 total=len(names) * len(seeds) * len(budgets))
        for name in names:
            for budget in budgets:
                label = name if budget is None else f"{name} (tuning budget {budget})"
                runs = []
                for seed in seeds:
                    runs.append(run_dataset(name, size, seed, workdir / f"{name}-{seed}",
                                            budget))
                    progress.advance(task)
                for metric in METRICS:
                    value = statistics.median(run[metric] for run in runs)
                    results.append(Result(AREA, f"{label}: {metric}", value,
                                          f"median of {len(seeds)} seed(s)"))
    return results


def run(size: int, workdir: Path) -> list[Result]:
    """The bench harness entry point: seed 1 of every dataset."""
    return measure(size, workdir, [1], dataset_names())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--size", type=int, default=40_000, help="transactions per dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--datasets", nargs="+", choices=dataset_names(), default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--tuning-budgets", type=int, nargs="+", default=None,
                        help="compare these model-selection budgets (0: the defaults only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraudops-quality-") as tmp:
        results = measure(args.size, args.workdir or Path(tmp), args.seeds,
                          args.datasets or dataset_names(),
                          tuple(args.tuning_budgets) if args.tuning_budgets else (None,))
    table = Table(title=f"model quality at {args.size:,} transactions, seeds {args.seeds}")
    for column in ("dataset", "metric", "median"):
        table.add_column(column)
    for result in results:
        dataset, metric = result.name.split(": ", 1)
        table.add_row(dataset, metric, f"{result.value:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
