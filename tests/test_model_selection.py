"""Model selection on the validation window, then a refit on train + validation.

The pipeline's TuningStep is interpreted by the local executor with a
successive-halving search inside one training process (training/search.py);
the Train step refits the chosen values on train + validation for the chosen
number of rounds; the evaluation report records what was chosen.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from test_container_scripts import (
    PREPROCESS,
    REPO,
    TRAIN,
    load_script,
    make_feature_table,
    run_script,
)

SEARCH = REPO / "training" / "search.py"
RANGES = {
    "IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "2", "MaxValue": "6",
                                "ScalingType": "Auto"}],
    "ContinuousParameterRanges": [
        {"Name": "eta", "MinValue": "0.05", "MaxValue": "0.3", "ScalingType": "Logarithmic"},
        {"Name": "subsample", "MinValue": "0.6", "MaxValue": "1.0", "ScalingType": "Auto"},
    ],
}


def search_module():
    load_script(TRAIN)  # puts training/ on sys.path
    import search

    return search


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_is_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(2_000) < 0.05).astype(float)
    scores = np.round(rng.random(2_000) + labels * 0.3, 2)  # rounded: many ties
    assert search_module().average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)


def test_draws_stay_in_their_ranges_and_log_ranges_favour_small_values():
    search = search_module()
    ranges = {r.name: r for r in search.parse_ranges(RANGES)}
    rng = np.random.default_rng(0)
    depths = [ranges["max_depth"].draw(rng) for _ in range(500)]
    etas = [ranges["eta"].draw(rng) for _ in range(2_000)]
    assert set(depths) == {2, 3, 4, 5, 6}
    assert all(0.05 <= e <= 0.3 for e in etas)
    assert np.median(etas) == pytest.approx(math.sqrt(0.05 * 0.3), rel=0.1)  # log-uniform


def test_a_log_range_must_be_positive():
    with pytest.raises(ValueError, match="cannot be searched on a log scale"):
        search_module().parse_ranges({"ContinuousParameterRanges": [
            {"Name": "eta", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"}]})


def test_the_first_candidate_is_the_defaults():
    search = search_module()
    ranges = search.parse_ranges(RANGES)
    defaults = {"max_depth": 5, "eta": 0.1, "subsample": 0.8}
    drawn = search.candidates(ranges, defaults, 4, seed=3)
    assert drawn[0] == defaults and len(drawn) == 4
    assert drawn == search.candidates(ranges, defaults, 4, seed=3)  # reproducible


def test_sampling_keeps_every_fraud_and_weights_the_rest():
    search = search_module()
    labels = np.r_[np.ones(50), np.zeros(99_950)]
    rows, share = search.weighted_sample(labels, 10_000, seed=0)
    assert labels[rows].sum() == 50
    assert len(rows) == pytest.approx(10_000, rel=0.05)
    assert share == pytest.approx(9_950 / 99_950)
    assert search.weighted_sample(labels[:5_000], 10_000, seed=0)[1] == 1.0


# --- train.py in search and refit modes -------------------------------------------------


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A preprocessed split (train / validation / test) of a crafted feature table."""
    base = tmp_path_factory.mktemp("split")
    make_feature_table(base / "processing" / "input" / "features", n_days=30, label_delay=2)
    done = run_script(PREPROCESS, "--base-dir", str(base), cwd=base)
    assert done.returncode == 0, done.stderr
    return base


def run_train(split, base, *args):
    env = {"SM_CHANNEL_TRAIN": str(split / "processing" / "train"),
           "SM_CHANNEL_VALIDATION": str(split / "processing" / "validation")}
    return run_script(TRAIN, "--base-dir", str(base), "--nthread", "1", *args, env=env,
                      cwd=base)


def spec(max_jobs: int, max_seconds: float | None = None) -> str:
    return json.dumps({"ranges": RANGES, "max_jobs": max_jobs, "max_seconds": max_seconds,
                       "objective": "validation:average_precision", "strategy": "Bayesian"})


@pytest.fixture(scope="module")
def searched(split, tmp_path_factory):
    base = tmp_path_factory.mktemp("search")
    done = run_train(split, base, "--fraudops-tuning-search", spec(6))
    assert done.returncode == 0, done.stderr
    metadata = json.loads((base / "model" / "training_metadata.json").read_text())
    return base, metadata, done.stdout


def test_the_search_tries_the_trials_and_keeps_the_best(searched):
    base, metadata, stdout = searched
    tuning = metadata["tuning"]
    trials = tuning["trials"]
    assert 1 <= len(trials) <= 6 and tuning["trials_run"] == len(trials)
    assert trials[0]["trial"] == tuning["chosen_trial"]
    assert [t["validation_average_precision"] for t in trials] == sorted(
        (t["validation_average_precision"] for t in trials), reverse=True)
    assert tuning["chosen"] == trials[0]["hyperparameters"]
    assert set(tuning["chosen"]) == {"max_depth", "eta", "subsample"}
    assert any(t["trial"] == 1 for t in trials)  # the defaults always run
    assert metadata["best_iteration"] + 1 == trials[0]["rounds"]
    assert f"validation-average-precision: {metadata['validation_average_precision']:.6f}" \
        in stdout
    assert (base / "model" / "xgboost-model.json").is_file()


def test_the_search_stops_when_its_time_is_spent(split, tmp_path):
    started = time.monotonic()
    # Binned once (QuantileDMatrix), 40 first rungs of this small split fit in 0.5 s.
    done = run_train(split, tmp_path, "--fraudops-tuning-search", spec(40, max_seconds=0.01))
    assert done.returncode == 0, done.stderr
    tuning = json.loads((tmp_path / "model" / "training_metadata.json").read_text())["tuning"]
    assert tuning["budget_spent"] and tuning["trials_run"] < 40
    assert time.monotonic() - started < 30


def test_one_trial_trains_only_the_defaults(split, tmp_path):
    done = run_train(split, tmp_path, "--fraudops-tuning-search", spec(1))
    assert done.returncode == 0, done.stderr
    tuning = json.loads((tmp_path / "model" / "training_metadata.json").read_text())["tuning"]
    assert [t["trial"] for t in tuning["trials"]] == [1]
    assert tuning["chosen"] == {"max_depth": 5, "eta": 0.1, "subsample": 0.8}


def test_the_refit_fits_train_and_validation_for_the_tuned_rounds(split, searched, tmp_path):
    search_base, tuned, _ = searched
    chosen = tuned["tuning"]["chosen"]
    args = [arg for name, value in chosen.items() for arg in (f"--{name}", str(value))]
    env_tuned = str(search_base / "model")
    done = run_script(
        TRAIN, "--base-dir", str(tmp_path), "--nthread", "1", "--refit", "true", *args,
        env={"SM_CHANNEL_TRAIN": str(split / "processing" / "train"),
             "SM_CHANNEL_VALIDATION": str(split / "processing" / "validation"),
             "SM_CHANNEL_TUNED": env_tuned}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metadata = json.loads((tmp_path / "model" / "training_metadata.json").read_text())
    import pandas as pd

    rows = sum(len(pd.read_parquet(split / "processing" / name / "data.parquet"))
               for name in ("train", "validation"))
    assert metadata["refit"]["rows"] == rows
    assert metadata["rounds_run"] == tuned["best_iteration"] + 1
    assert metadata["tuning"]["chosen"] == chosen
    assert metadata["hyperparameters"]["max_depth"] == chosen["max_depth"]


def test_the_refit_without_a_tuned_model_says_what_it_needs(split, tmp_path):
    done = run_train(split, tmp_path, "--refit", "true")
    assert done.returncode == 2
    assert "needs the tuned trial's model in the 'tuned' channel" in done.stderr


# --- the TuningStep, run by the local executor -------------------------------------------


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """generate -> ingest -> features -> the pipeline with a 5-trial model selection."""
    from pipelines.core.workspace import Workspace
    from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops
    from pipelines.data.features.build import build_feature_table
    from pipelines.data.ingest import ingest
    from pipelines.fraud.local_run import read_evaluation, run_pipeline_locally

    ws = Workspace.open(tmp_path_factory.mktemp("tuned") / "ws")
    table = generate_transactions(GeneratorConfig(transactions=25_000, days=35, seed=3))
    write_landing_drops(table, ws.landing)
    ingest(ws)
    build_feature_table(ws)
    started = time.monotonic()
    run = run_pipeline_locally(ws, {"QualityThresholdAP": 0.0}, progress=False,
                               pipeline_kwargs={"tuning_max_jobs": 5, "tuning_max_seconds": 60})
    assert run.succeeded, run.failure(ws).message
    return ws, run.execution, read_evaluation(ws, run.execution), time.monotonic() - started


@pytest.mark.slow
def test_the_executor_runs_the_tuning_step_and_reports_its_trials(executed):
    from pipelines.fraud.pipeline import search_space

    ws, execution, _, _ = executed
    tune = execution.step("Tune")
    assert (tune.type, tune.status) == ("Tuning", "Succeeded")
    best = tune.properties["BestTrainingJob"]
    summaries = tune.properties["TrainingJobSummaries"]
    assert 1 <= len(summaries) <= 5 and summaries[0] == best
    assert set(best["TunedHyperParameters"]) == set(search_space())
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"] == \
        "validation:average_precision"
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert values == sorted(values, reverse=True)
    # The refit reads the tuned values and the best trial's model (for its rounds).
    train = execution.step("Train").inputs
    for name, value in best["TunedHyperParameters"].items():
        assert str(train["HyperParameters"][name]).strip('"') == value
    tuned_uri = next(c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]
                     if c["ChannelName"] == "tuned")
    assert tuned_uri.endswith(f"/{best['TrainingJobName']}/output/model.tar.gz")
    assert ws.local_path(tuned_uri).is_file()


@pytest.mark.slow
def test_the_evaluation_records_the_chosen_values_and_the_refit(executed):
    _, execution, evaluation, _ = executed
    best = execution.step("Tune").properties["BestTrainingJob"]["TunedHyperParameters"]
    report = json.loads(evaluation.path.read_text())
    tuning = report["model"]["tuning"]
    assert {k: str(v) for k, v in tuning["chosen"].items()} == best
    assert tuning["refit"]["windows"] == ["train", "validation"]
    assert tuning["trials_run"] <= 5 and tuning["seconds"] <= 60
    assert evaluation.tuning["summary"].startswith(f"{tuning['trials_run']} trial(s)")
