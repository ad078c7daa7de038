"""The SageMaker container scripts, run as the containers run them.

preprocess -> train -> (tar model dir) -> evaluate, each a subprocess against a
scratch directory laid out like /opt/ml, on a small synthetic feature table.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

REPO = Path(__file__).resolve().parent.parent
PREPROCESS = REPO / "processing" / "preprocess.py"
TRAIN = REPO / "training" / "train.py"
EVALUATE = REPO / "processing" / "evaluate.py"
FEATURES = ["f_amount", "f_velocity", "f_terminal_risk", "f_noise"]
FIRST_DAY = date(2026, 1, 1)
N_DAYS = 30
LABEL_DELAY = 7
ALERT_THRESHOLD = 0.5
# Modules the SageMaker XGBoost framework container provides.
CONTAINER_PACKAGES = {"numpy", "pandas", "pyarrow", "sklearn", "xgboost"}


def load_script(path: Path):
    """Import a standalone script as a module (the folders are not packages); its folder
    goes on sys.path, as in the container, so sibling modules (training/search.py) import."""
    name = f"container_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_feature_table(
    features_dir: Path, seed: int = 7, n_days: int = N_DAYS, label_delay: int = LABEL_DELAY
) -> pd.DataFrame:
    """A hive-partitioned feature table where fraud depends on two features, built (as its
    manifest says) with ``label_delay``."""
    rng = np.random.default_rng(seed)
    per_day = 220
    n = n_days * per_day
    day_index = np.repeat(np.arange(n_days), per_day)
    seconds = rng.integers(0, 86_400, size=n)
    timestamps = pd.to_datetime(FIRST_DAY) + pd.to_timedelta(day_index, "D")
    timestamps = (timestamps + pd.to_timedelta(seconds, "s")).tz_localize("UTC")
    amount = rng.lognormal(3.5, 1.0, size=n)
    risk = rng.beta(1, 12, size=n)
    velocity = rng.poisson(2, size=n).astype(float)
    logit = -12.5 + 30.0 * risk + 1.2 * np.log(amount) + 0.5 * velocity
    is_fraud = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float64")
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i:06d}" for i in range(n)],
            "timestamp": timestamps,
            "customer_id": [f"c{v:03d}" for v in rng.integers(0, 400, size=n)],
            "terminal_id": [f"m{v:03d}" for v in rng.integers(0, 150, size=n)],
            "amount": amount,
            "is_fraud": is_fraud,
            "f_amount": np.log(amount),
            "f_velocity": velocity,
            "f_terminal_risk": risk,
            "f_noise": rng.normal(size=n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "f_velocity"] = np.nan  # XGBoost missing values
    frame.loc[frame.index[:15], "is_fraud"] = np.nan  # unknown labels on day 1
    frame["dt"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    for dt, part in frame.groupby("dt"):
        out = features_dir / f"dt={dt}"
        out.mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pandas(part.drop(columns="dt"), preserve_index=False),
            out / "part-0.parquet",
        )
    (features_dir / "_feature_set.json").write_text(
        json.dumps(
            {
                "version": "test-1",
                "feature_columns": FEATURES,
                "label_column": "is_fraud",
                "id_columns": ["transaction_id", "timestamp", "customer_id", "terminal_id"],
                "label_delay_days": label_delay,
            }
        )
    )
    return frame


def run_script(
    script: Path, *args: str, env: dict | None = None, cwd: Path
) -> subprocess.CompletedProcess:
    """Run a container script the way SageMaker does: a fresh interpreter, outside the repo."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
    )


def tar_model_dir(model_dir: Path, archive: Path) -> None:
    """What SageMaker does with SM_MODEL_DIR at the end of a training job."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> dict:
    """preprocess -> train -> evaluate once; every test reads the results."""
    base = tmp_path_factory.mktemp("opt_ml")
    source = make_feature_table(base / "processing" / "input" / "features")
    results = {"base": base, "source": source}
    results["preprocess"] = run_script(PREPROCESS, "--base-dir", str(base), cwd=base)
    assert results["preprocess"].returncode == 0, results["preprocess"].stderr
    train_env = {
        "SM_CHANNEL_TRAIN": str(base / "processing" / "train"),
        "SM_CHANNEL_VALIDATION": str(base / "processing" / "validation"),
        "SM_NUM_CPUS": "1",
    }
    results["train"] = run_script(
        TRAIN,
        "--base-dir",
        str(base),
        "--num-round",
        "300",
        "--early-stopping-rounds",
        "10",
        env=train_env,
        cwd=base,
    )
    assert results["train"].returncode == 0, results["train"].stderr
    tar_model_dir(base / "model", base / "processing" / "model" / "model.tar.gz")
    results["evaluate"] = run_script(
        EVALUATE, "--base-dir", str(base), "--k", "5",
        "--alert-threshold", str(ALERT_THRESHOLD), cwd=base,
    )  # fmt: skip
    assert results["evaluate"].returncode == 0, results["evaluate"].stderr
    return results


def read_split(base: Path, name: str) -> tuple[pd.DataFrame, dict]:
    out = base / "processing" / name
    return pd.read_parquet(out / "data.parquet"), json.loads((out / "feature_set.json").read_text())


# --- preprocess ----------------------------------------------------------------


def test_split_is_chronological_with_label_delay_gap(pipeline_run):
    base = pipeline_run["base"]
    frames = {name: read_split(base, name) for name in ("train", "validation", "test")}
    days = {
        name: pd.to_datetime(frame["timestamp"], utc=True).dt.date
        for name, (frame, _) in frames.items()
    }
    assert days["train"].max() < days["validation"].min()
    # The last LABEL_DELAY days before the test window are never used.
    assert (days["test"].min() - days["validation"].max()).days == LABEL_DELAY + 1
    assert days["test"].max() == FIRST_DAY + timedelta(days=N_DAYS - 1)
    assert days["train"].min() == FIRST_DAY
    ids = [set(frame["transaction_id"]) for frame, _ in frames.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Default windows on 30 days with a 7-day delay: 5 test days, 5 validation days.
    test_window = frames["test"][1]["split"]["window"]
    assert (test_window["start"], test_window["end"]) == ("2026-01-26", "2026-01-30")
    assert frames["validation"][1]["split"]["window"]["end"] == "2026-01-18"


def test_split_drops_unknown_labels_and_keeps_contract_columns(pipeline_run):
    base, source = pipeline_run["base"], pipeline_run["source"]
    train, meta = read_split(base, "train")
    assert train["is_fraud"].notna().all()
    assert not set(source.loc[source["is_fraud"].isna(), "transaction_id"]) & set(
        train["transaction_id"]
    )
    assert meta["split"]["window"]["dropped_unlabelled"] == 15
    assert meta["feature_columns"] == FEATURES and meta["label_delay_days"] == LABEL_DELAY
    for column in ("transaction_id", "customer_id", "timestamp", "terminal_id", *FEATURES):
        assert column in train.columns
    assert "train: 2026-01-01..2026-01-13 (13 days) rows=" in pipeline_run["preprocess"].stdout


def test_explicit_windows_are_laid_out_forward_from_train_start(tmp_path, capsys):
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=20, label_delay=2)
    code, err = run_main(
        PREPROCESS, capsys, "--base-dir", str(tmp_path), "--train-start", "2026-01-02",
        "--train-days", "5", "--validation-days", "3", "--test-days", "2",
        "--label-delay-days", "2", "--validation-gap-days", "1",
    )  # fmt: skip
    assert code == 0, err
    _, meta = read_split(tmp_path, "test")
    windows = meta["split"]["windows"]
    assert (windows["train"]["start"], windows["train"]["end"]) == ("2026-01-02", "2026-01-06")
    assert (windows["validation"]["start"], windows["validation"]["end"]) == (
        "2026-01-08",
        "2026-01-10",
    )
    assert (windows["test"]["start"], windows["test"]["end"]) == ("2026-01-13", "2026-01-14")


def run_main(script: Path, capsys, *args: str) -> tuple[int, str]:
    """Call a script's main() in-process (error paths; cheaper than a new interpreter)."""
    code = load_script(script).main(list(args))
    return code, capsys.readouterr().err


def test_pipeline_parameter_defaults_mean_derive_from_data(tmp_path, capsys):
    """The pipeline passes TrainStartDate "", TrainDays 0 and LabelDelayDays -1 for "derive"."""
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=12, label_delay=2)
    code, err = run_main(
        PREPROCESS, capsys, "--base-dir", str(tmp_path), "--train-start", "",
        "--train-days", "0", "--validation-days", "3", "--test-days", "3",
        "--label-delay-days", "-1",
    )  # fmt: skip
    assert code == 0, err
    windows = read_split(tmp_path, "train")[1]["split"]["windows"]
    spans = {name: (w["start"], w["end"]) for name, w in windows.items()}
    assert spans == {
        "train": ("2026-01-01", "2026-01-04"),
        "validation": ("2026-01-05", "2026-01-07"),
        "test": ("2026-01-10", "2026-01-12"),
    }


def test_window_past_the_data_fails_naming_dates_and_flags(tmp_path, capsys):
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=12)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path), "--train-days", "10")
    assert code == 2
    assert "2026-01-12" in err and "--train-days" in err
    assert not (tmp_path / "processing" / "train").exists()  # nothing half-written


def test_too_short_history_fails_with_what_to_change(tmp_path, capsys):
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=10)
    code, err = run_main(
        PREPROCESS,
        capsys,
        "--base-dir",
        str(tmp_path),
        "--test-days",
        "3",
        "--validation-days",
        "3",
    )
    assert code == 2
    assert "no days left for training" in err
    assert "2026-01-01..2026-01-10" in err and "--label-delay-days" in err


def test_a_label_delay_other_than_the_features_is_refused_naming_both(tmp_path, capsys):
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=12)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path),
                         "--label-delay-days", "3")
    assert code == 2
    assert "label delay of 3 days" in err and f"built with {LABEL_DELAY} days" in err
    assert "fraudops features --label-delay-days 3" in err
    assert not (tmp_path / "processing" / "train").exists()  # nothing written


def test_the_split_uses_the_delay_the_features_were_built_with(tmp_path, capsys):
    make_feature_table(tmp_path / "processing" / "input" / "features", n_days=20, label_delay=4)
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path))
    assert code == 0, err
    split = read_split(tmp_path, "test")[1]["split"]
    assert split["label_delay_days"] == 4
    gap = date.fromisoformat(split["windows"]["test"]["start"]) - date.fromisoformat(
        split["windows"]["validation"]["end"])
    assert gap == timedelta(days=4 + 1)


def test_a_manifest_without_a_label_delay_is_refused(tmp_path, capsys):
    features_dir = tmp_path / "processing" / "input" / "features"
    make_feature_table(features_dir, n_days=3)
    manifest = json.loads((features_dir / "_feature_set.json").read_text())
    del manifest["label_delay_days"]
    (features_dir / "_feature_set.json").write_text(json.dumps(manifest))
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path))
    assert code == 2
    assert "label_delay_days None" in err and "fraudops features --label-delay-days N" in err


def test_missing_feature_set_file_is_a_clear_error(tmp_path, capsys):
    features_dir = tmp_path / "processing" / "input" / "features"
    make_feature_table(features_dir, n_days=3)
    (features_dir / "_feature_set.json").unlink()
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path))
    assert code == 2 and "_feature_set.json" in err


def test_an_unreadable_feature_file_is_named_with_what_to_do(tmp_path, capsys):
    features_dir = tmp_path / "processing" / "input" / "features"
    make_feature_table(features_dir, n_days=12)
    broken = sorted(features_dir.glob("dt=*/*.parquet"))[3]
    broken.write_bytes(b"torn")
    code, err = run_main(PREPROCESS, capsys, "--base-dir", str(tmp_path))
    assert code == 2
    assert f"feature table file {broken.relative_to(features_dir)}" in err
    assert "not a readable Parquet file" in err and "fraudops features" in err
    assert not (tmp_path / "processing" / "train").exists()  # nothing half-written


# --- train ---------------------------------------------------------------------


def test_training_stops_early_and_records_metadata(pipeline_run):
    base = pipeline_run["base"]
    model_dir = base / "model"
    metadata = json.loads((model_dir / "training_metadata.json").read_text())
    assert metadata["stopped_early"] is True
    assert metadata["rounds_run"] == metadata["best_iteration"] + 1 + 10
    assert metadata["windows"]["train"]["end"] == "2026-01-13"
    assert metadata["windows"]["validation"]["start"] == "2026-01-14"
    assert metadata["rows"]["train"]["rows"] == len(read_split(base, "train")[0])
    assert metadata["feature_set_version"] == "test-1"
    assert metadata["hyperparameters"]["scale_pos_weight"] == 1.0  # unweighted by default
    assert metadata["hyperparameters"]["tree_method"] == "hist"
    stdout = pipeline_run["train"].stdout
    assert f"validation-aucpr: {metadata['validation_aucpr']:.6f}" in stdout

    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    # Saved model holds exactly the best iteration's trees.
    assert booster.num_boosted_rounds() == metadata["best_iteration"] + 1
    assert json.loads((model_dir / "feature_set.json").read_text())["feature_columns"] == FEATURES


def test_training_rejects_a_train_window_without_fraud(tmp_path, pipeline_run, capsys, monkeypatch):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    frame, meta = read_split(pipeline_run["base"], "train")
    frame.assign(is_fraud=0).to_parquet(train_dir / "data.parquet")
    (train_dir / "feature_set.json").write_text(json.dumps(meta))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(train_dir))
    monkeypatch.setenv(
        "SM_CHANNEL_VALIDATION", str(pipeline_run["base"] / "processing" / "validation")
    )
    monkeypatch.delenv("SM_MODEL_DIR", raising=False)
    code, err = run_main(TRAIN, capsys, "--base-dir", str(tmp_path))
    assert code == 2
    assert "0 fraud" in err and "--train-days" in err
    assert not (tmp_path / "model").exists()


def test_training_on_a_capped_sample_keeps_every_fraud_and_the_weight_totals(
    tmp_path, pipeline_run, monkeypatch
):
    base = pipeline_run["base"]
    train = load_script(TRAIN)
    channel = train.read_channel("train", base / "processing" / "train")
    assert channel.values.dtype == np.float32 and channel.values.shape[1] == len(FEATURES)
    sample, weights, note = train.fit_rows(channel, 1000, seed=3)
    frauds = int(channel.labels.sum())
    assert int(sample.labels.sum()) == frauds  # every fraud
    assert sample.rows <= 1000 + frauds  # the share is drawn, so about the limit
    assert weights.sum() == pytest.approx(channel.rows, rel=0.1)  # totals as on all rows
    assert "weighted" in note
    assert train.fit_rows(channel, 0, seed=3)[1] is None  # 0: every row, unweighted
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(base / "processing" / "train"))
    monkeypatch.setenv("SM_CHANNEL_VALIDATION", str(base / "processing" / "validation"))
    code = train.main(["--base-dir", str(tmp_path), "--max-train-rows", "1000",
                       "--nthread", "1", "--verbose-eval", "0"])
    assert code == 0
    metadata = json.loads((tmp_path / "model" / "training_metadata.json").read_text())
    assert metadata["rows"]["train"]["rows"] == channel.rows
    assert metadata["rows"]["train"]["fit_rows"] == train.fit_rows(channel, 1000, seed=42)[2]
    assert metadata["hyperparameters"]["max_train_rows"] == 1000
    assert set(metadata["seconds"]) == {"read", "matrix", "boosting"}


def test_training_names_the_file_and_row_of_unusable_input(tmp_path, pipeline_run):
    train = load_script(TRAIN)
    frame, meta = read_split(pipeline_run["base"], "train")
    (tmp_path / "feature_set.json").write_text(json.dumps(meta))
    frame.drop(columns=["f_noise"]).to_parquet(tmp_path / "data.parquet")
    with pytest.raises(train.TrainingError, match="data.parquet lacks columns \\['f_noise'\\]"):
        train.read_channel("train", tmp_path)
    frame.assign(f_noise=np.where(np.arange(len(frame)) == 4, np.inf, frame["f_noise"])) \
        .to_parquet(tmp_path / "data.parquet")
    with pytest.raises(train.TrainingError, match="train row 4 feature 'f_noise' is infinite"):
        train.read_channel("train", tmp_path)


def test_scale_pos_weight_modes():
    train = load_script(TRAIN)
    assert train.resolve_scale_pos_weight("balanced", 990, 10) == pytest.approx(99.0)
    assert train.resolve_scale_pos_weight("sqrt", 990, 10) == pytest.approx(99.0**0.5)
    assert train.resolve_scale_pos_weight("2.5", 990, 10) == 2.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale-pos-weight", "heavy"], "--scale-pos-weight must be a positive number"),
        (["--eta", "0"], "--eta must be in (0, 1]"),
    ],
)
def test_training_rejects_bad_hyperparameters(tmp_path, capsys, args, message):
    code, err = run_main(TRAIN, capsys, "--base-dir", str(tmp_path), *args)
    assert code == 2 and message in err
    assert message in (tmp_path / "output" / "failure").read_text()  # SageMaker FailureReason


def test_training_rejects_unknown_hyperparameters_but_ignores_sagemaker_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_main(TRAIN, capsys, "--base-dir", str(tmp_path), "--max_dept", "3")
    assert "unknown hyperparameters ['--max_dept']" in capsys.readouterr().err
    args = load_script(TRAIN).parse_args(["--max_depth", "3", "--sagemaker_program", "train.py"])
    assert args.max_depth == 3


# --- evaluate ------------------------------------------------------------------


def test_evaluation_metrics_match_sklearn_on_saved_scores(pipeline_run):
    out = pipeline_run["base"] / "processing" / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    scores = pd.read_parquet(out / "test_scores.parquet")
    assert list(scores.columns) == [
        "transaction_id",
        "customer_id",
        "timestamp",
        "is_fraud",
        "score",
    ]
    test, _ = read_split(pipeline_run["base"], "test")
    assert len(scores) == len(test) == report["n_test"]
    assert report["n_fraud"] == int(scores["is_fraud"].sum())
    metrics = report["binary_classification_metrics"]
    y, s = scores["is_fraud"].to_numpy(), scores["score"].to_numpy()
    assert metrics["average_precision"]["value"] == pytest.approx(average_precision_score(y, s))
    assert metrics["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, s))
    alerts = s >= ALERT_THRESHOLD
    assert metrics["precision_at_threshold"]["value"] == pytest.approx(
        (alerts & (y == 1)).sum() / alerts.sum()
    )
    assert metrics["recall_at_threshold"]["value"] == pytest.approx(
        (alerts & (y == 1)).sum() / (y == 1).sum()
    )
    assert metrics["card_precision_at_k"]["k"] == 5
    # The run parameters the Register step copies into the model package.
    assert report["alert_threshold"] == ALERT_THRESHOLD
    assert report["model"]["label_delay_days"] == LABEL_DELAY
    assert report["model"]["feature_set_version"] == "test-1"
    assert report["test_window"] == {"start": "2026-01-26", "end": "2026-01-30", "days": 5}
    # The synthetic signal is strong: a working model ranks far above chance.
    assert metrics["roc_auc"]["value"] > 0.75
    assert metrics["average_precision"]["value"] > 2 * y.mean()
    curve = report["pr_curve"]
    assert 2 <= len(curve["thresholds"]) <= 200
    assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"])
    assert "average-precision:" in pipeline_run["evaluate"].stdout


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_ranking_metrics_are_scikit_learns_to_the_bit(seed):
    """evaluate.py ships without scikit-learn: its AP, ROC AUC and PR curve must be the
    very numbers sklearn gives, ties (rounded scores, float32 predictions) included."""
    evaluate = load_script(EVALUATE)
    rng = np.random.default_rng(seed)
    n = 20_000
    labels = (rng.random(n) < 0.01 * (seed + 1)).astype(int)
    raw = rng.random(n) + labels * rng.random(n)
    for scores in (raw, np.round(raw, 2), raw.astype(np.float32).astype(np.float64)):
        assert evaluate.average_precision_score(labels, scores) == average_precision_score(
            labels, scores)
        assert evaluate.roc_auc_score(labels, scores) == roc_auc_score(labels, scores)
        for ours, theirs in zip(evaluate.precision_recall_curve(labels, scores),
                                precision_recall_curve(labels, scores), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_test_scores_equal_the_booster_predictions(pipeline_run):
    import xgboost as xgb

    base = pipeline_run["base"]
    booster = xgb.Booster()
    booster.load_model(str(base / "model" / "xgboost-model.json"))
    test, _ = read_split(base, "test")
    expected = booster.predict(xgb.DMatrix(test[FEATURES].to_numpy(), feature_names=FEATURES))
    scores = pd.read_parquet(base / "processing" / "evaluation" / "test_scores.parquet")
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-6)


def test_endpoint_handler_scores_like_evaluation(pipeline_run):
    """The trained model directory loads in inference.py and reproduces the test scores."""
    handler = load_script(REPO / "inference" / "inference.py")
    base = pipeline_run["base"]
    model = handler.model_fn(str(base / "model"))
    test, _ = read_split(base, "test")
    records = test[FEATURES].head(50).astype(object).where(test[FEATURES].head(50).notna(), None)
    body = json.dumps({"instances": records.to_dict(orient="records")})
    response = json.loads(
        handler.output_fn(
            handler.predict_fn(handler.input_fn(body, "application/json"), model),
            "application/json",
        )
    )
    scores = pd.read_parquet(base / "processing" / "evaluation" / "test_scores.parquet")
    np.testing.assert_allclose(
        [p["score"] for p in response["predictions"]], scores["score"].head(50), rtol=1e-6
    )


def brute_force_card_precision(frame: pd.DataFrame, k: int) -> float:
    """Reference: loop over days and cards explicitly, blocking cards found earlier."""
    blocked: set[str] = set()
    daily = []
    for day in sorted(frame["day"].unique()):
        rows = frame[(frame["day"] == day) & ~frame["card"].isin(blocked)]
        cards = {}
        for card in rows["card"].unique():
            mine = rows[rows["card"] == card]
            cards[card] = (mine["score"].max(), bool(mine["y"].max()))
        ranked = sorted(cards.items(), key=lambda item: -item[1][0])[:k]
        found = [card for card, (_, fraud) in ranked if fraud]
        daily.append(len(found) / k)
        blocked.update(found)
    return sum(daily) / len(daily)


def test_card_precision_at_k_on_a_crafted_case():
    evaluate = load_script(EVALUATE)
    # Day 1: card A (fraud via its low-score transaction) tops with 0.9, B 0.8 genuine,
    # C 0.7 fraud, D 0.1 fraud. Top-2 = A, B -> 1/2.
    # Day 2: A again at 0.95 (blocked: found on day 1), E 0.6 fraud, F 0.5 genuine -> E, F -> 1/2.
    # Day 3: only G, genuine -> 0/2 (capacity unused still counts in the denominator).
    rows = [
        ("2026-02-01", "A", 0.9, 0),
        ("2026-02-01", "A", 0.2, 1),
        ("2026-02-01", "B", 0.8, 0),
        ("2026-02-01", "C", 0.7, 1),
        ("2026-02-01", "D", 0.1, 1),
        ("2026-02-02", "A", 0.95, 1),
        ("2026-02-02", "E", 0.6, 1),
        ("2026-02-02", "F", 0.5, 0),
        ("2026-02-03", "G", 0.3, 0),
    ]
    frame = pd.DataFrame(rows, columns=["day", "card", "score", "y"])
    value, per_day = evaluate.card_precision_at_k(
        pd.to_datetime(frame["day"]), frame["card"], frame["y"], frame["score"].to_numpy(), k=2
    )
    assert value == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert value == pytest.approx(brute_force_card_precision(frame, 2))
    assert [d["fraud_cards_found"] for d in per_day] == [1, 1, 0]
    kept, _ = evaluate.card_precision_at_k(
        pd.to_datetime(frame["day"]),
        frame["card"],
        frame["y"],
        frame["score"].to_numpy(),
        k=2,
        remove_detected=False,
    )
    # Without blocking, A (fraud again) and E fill day 2's top 2.
    assert kept == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_card_precision_matches_brute_force_on_random_data():
    evaluate = load_script(EVALUATE)
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame(
        {
            "day": rng.choice(pd.date_range("2026-03-01", periods=4), size=n),
            "card": [f"c{v}" for v in rng.integers(0, 40, size=n)],
            "score": rng.random(n),
            "y": (rng.random(n) < 0.1).astype(int),
        }
    )
    for k in (1, 5, 50):
        value, _ = evaluate.card_precision_at_k(
            frame["day"], frame["card"], frame["y"], frame["score"].to_numpy(), k=k
        )
        assert value == pytest.approx(brute_force_card_precision(frame, k))


def test_evaluate_rejects_an_archive_without_a_model(tmp_path, pipeline_run, capsys):
    base = tmp_path
    archive = base / "processing" / "model" / "model.tar.gz"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("not a model")
    tar_model_dir(empty, archive)
    test_src = pipeline_run["base"] / "processing" / "test"
    test_dst = base / "processing" / "test"
    test_dst.mkdir(parents=True)
    for name in ("data.parquet", "feature_set.json"):
        (test_dst / name).write_bytes((test_src / name).read_bytes())
    code, err = run_main(EVALUATE, capsys, "--base-dir", str(base),
                         "--alert-threshold", str(ALERT_THRESHOLD))
    assert code == 2 and "xgboost-model.json" in err
    assert not (base / "processing" / "evaluation").exists()


# --- packaging -----------------------------------------------------------------


@pytest.mark.parametrize(
    "script", [PREPROCESS, TRAIN, REPO / "training" / "search.py", EVALUATE,
               REPO / "inference" / "inference.py"]
)
def test_container_scripts_import_only_what_the_container_provides(script):
    tree = ast.parse(script.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    shipped = {path.stem for path in script.parent.glob("*.py")}  # the same folder ships
    foreign = modules - set(sys.stdlib_module_names) - CONTAINER_PACKAGES - shipped
    assert not foreign, f"{script.name} imports {foreign}, which the SageMaker container lacks"


def test_evaluate_refuses_a_model_archive_escaping_its_directory(tmp_path, capsys):
    import io

    archive = tmp_path / "processing" / "model" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    code, err = run_main(EVALUATE, capsys, "--base-dir", str(tmp_path),
                         "--alert-threshold", str(ALERT_THRESHOLD))
    assert code == 2 and "unsafe path '../escaped.json'" in err
    assert not (tmp_path / "processing" / "escaped.json").exists()
