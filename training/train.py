"""Train the XGBoost fraud classifier (SageMaker XGBoost framework container, script mode).

Ships as the ``training/`` folder without the ``pipelines`` package, so it uses
only numpy, pandas, pyarrow and xgboost.

Channels (SageMaker environment variables, defaults under ``--base-dir``):
    SM_CHANNEL_TRAIN       <base>/input/data/train        data.parquet + feature_set.json
    SM_CHANNEL_VALIDATION  <base>/input/data/validation   (written by processing/preprocess.py)
    SM_MODEL_DIR           <base>/model
    SM_OUTPUT_DATA_DIR     <base>/output/data

Writes to SM_MODEL_DIR:
    xgboost-model.json      the booster (Booster.save_model), truncated to the best
                            iteration so every consumer predicts with the same trees
    feature_set.json        the feature set the model was trained on (column order)
    training_metadata.json  hyperparameters, best iteration, windows, row counts,
                            validation aucpr, xgboost and feature-set versions
and the per-round metric history to SM_OUTPUT_DATA_DIR/training_history.json.

Class imbalance (fraud is ~1% of rows): early stopping watches validation
aucpr, which the mass of easy genuine rows cannot inflate, and evaluation
reports AP and card precision@k. Re-weighting the fraud class is available
(``--scale-pos-weight balanced`` = negatives/positives of the train set,
``sqrt`` = its square root, or a number) but is off by default (1): on two
synthetic datasets from ``fraudops generate`` (40 and 60 days, 0.7-0.9% fraud)
``balanced`` lowered validation aucpr from 0.62 to 0.42-0.54 and test AP from
0.31/0.53 to 0.10/0.40, because each fraud row then weighs ~100x and
min_child_weight no longer stops leaves that isolate single frauds. Unweighted
scores are also calibrated probabilities, so the alert threshold means what it
says.

Hyperparameters arrive as ``--kebab-case`` arguments (``--snake_case`` is accepted
too, as SageMaker passes hyperparameter names verbatim). Metrics are printed as
``validation-aucpr: 0.123`` lines for SageMaker metric definitions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

# Threads that wait for work sleep instead of spinning: on a shared 2-core host a
# spinning OpenMP team made boosting ~10x slower (must be set before xgboost loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# xgboost imports scikit-learn whenever it is installed, for sklearn-style wrappers
# this script never uses: 1.2 of the 1.4 s its import took, in each of Tune and Train.
# Run as a script, it is told sklearn is absent; not when imported (tests import this
# module into processes that use sklearn).
if __name__ == "__main__":
    sys.modules.setdefault("sklearn", None)  # type: ignore[assignment]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import xgboost as xgb  # noqa: E402
from search import (  # noqa: E402  (training/search.py, shipped in this folder)
    OBJECTIVE_LINE,
    SEARCH_HYPERPARAMETER,
    SEARCH_ROWS,
    Search,
    SearchData,
    average_precision,
    candidates,
    parse_ranges,
    weighted_sample,
)

MODEL_FILE = "xgboost-model.json"
FEATURE_SET_FILE = "feature_set.json"
METADATA_FILE = "training_metadata.json"
HISTORY_FILE = "training_history.json"
DATA_FILE = "data.parquet"
EVAL_METRIC = "aucpr"
WEIGHT_MODES = ("balanced", "sqrt")
# Rows boosted on by default: every fraud and a weighted share of the genuine rows.
# Measured on 1.75M transactions (generator: 1.34M train rows, 11k frauds; handbook
# layout: 1.49M, 11.6k), QuantileDMatrix, 2 threads: all rows 0.16 s per round and
# test AP 0.682 / 0.757; a 30% genuine share 0.04 s per round, AP 0.668 / 0.753-0.756.
MAX_TRAIN_ROWS = 400_000


class TrainingError(Exception):
    """A user-fixable problem with the training input or hyperparameters."""


@dataclass(frozen=True)
class Channel:
    """One input channel: its feature matrix, labels and the feature set written beside it.

    ``values`` is float32 in ``feature_columns`` order with NaN for missing: what
    XGBoost bins anyway, so nothing is lost and the matrix is built once.
    """

    name: str
    values: np.ndarray
    labels: np.ndarray
    feature_set: dict

    @property
    def rows(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Channel:
        return Channel(self.name, self.values[rows], self.labels[rows], self.feature_set)


def concat_channels(name: str, channels: list[Channel]) -> Channel:
    """Rows of several channels of one feature set, in order."""
    return Channel(name, np.concatenate([c.values for c in channels]),
                   np.concatenate([c.labels for c in channels]), channels[0].feature_set)


# --- arguments ---------------------------------------------------------------


def default_nthread() -> int:
    """SageMaker's SM_NUM_CPUS, else OMP_NUM_THREADS, else every core."""
    for var in ("SM_NUM_CPUS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def add_hyperparameter(parser: argparse.ArgumentParser, name: str, type_, default, help_: str):
    """Register ``--name-with-dashes`` and its ``--name_with_underscores`` alias."""
    snake = name.replace("-", "_")
    flags = [f"--{name}"] + ([f"--{snake}"] if snake != name else [])
    parser.add_argument(*flags, dest=snake, type=type_, default=default, help=help_)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--base-dir", type=Path, default=Path("/opt/ml"))
    # Shallow trees, row/column subsampling and a minimum child weight keep the
    # model from memorising the few fraud cases; early stopping picks the size.
    add_hyperparameter(parser, "max-depth", int, 5, "maximum tree depth")
    add_hyperparameter(parser, "eta", float, 0.1, "learning rate")
    add_hyperparameter(parser, "subsample", float, 0.8, "row subsample per tree")
    add_hyperparameter(parser, "colsample-bytree", float, 0.8, "column subsample per tree")
    add_hyperparameter(parser, "min-child-weight", float, 3.0, "minimum hessian in a leaf")
    add_hyperparameter(parser, "gamma", float, 0.0, "minimum loss reduction to split")
    add_hyperparameter(parser, "lambda", float, 1.0, "L2 regularisation")
    add_hyperparameter(parser, "alpha", float, 0.0, "L1 regularisation")
    add_hyperparameter(parser, "max-bin", int, 256, "histogram bins per feature")
    add_hyperparameter(parser, "num-round", int, 400, "maximum boosting rounds")
    add_hyperparameter(
        parser, "max-train-rows", int, MAX_TRAIN_ROWS,
        "fit on every fraud and a weighted share of the genuine rows up to this many rows "
        "(0: every row)",
    )
    add_hyperparameter(parser, "early-stopping-rounds", int, 30, "patience on validation aucpr")
    add_hyperparameter(
        parser, "min-rounds", int, 50, "boosting rounds always kept before early stopping may pick"
    )
    add_hyperparameter(
        parser,
        "scale-pos-weight",
        str,
        "1",
        "weight of the fraud class: a number, 'balanced' (train negatives/positives) or 'sqrt'",
    )
    add_hyperparameter(
        parser, "refit", _true, False,
        "fit on train + validation with the rounds of the tuned trial (the 'tuned' channel)",
    )
    add_hyperparameter(
        parser, SEARCH_HYPERPARAMETER, str, "",
        "model selection in this process (JSON; the local executor's TuningStep)",
    )
    add_hyperparameter(parser, "nthread", int, default_nthread(), "threads")
    add_hyperparameter(parser, "seed", int, 42, "random seed")
    add_hyperparameter(parser, "verbose-eval", int, 25, "print metrics every N rounds")
    args, unknown = parser.parse_known_args(argv)
    # The training toolkit reserves sagemaker_* hyperparameters for itself; any
    # other unknown name is a typo that would otherwise be silently ignored.
    typos = [a for a in unknown if a.startswith("--") and not a.startswith("--sagemaker_")]
    if typos:
        parser.error(f"unknown hyperparameters {typos}; known: {known_hyperparameters(parser)}")
    return args


def _true(text: str) -> bool:
    """A boolean hyperparameter (SageMaker passes every value as text)."""
    if text.strip().lower() in ("true", "1", "yes"):
        return True
    if text.strip().lower() in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def known_hyperparameters(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(a.option_strings[0] for a in parser._actions if a.option_strings[0] != "-h")


def channel_dirs(base_dir: Path) -> dict[str, Path]:
    """Resolve the SageMaker directories from the environment, defaulting under base_dir."""
    return {
        "train": Path(os.environ.get("SM_CHANNEL_TRAIN", base_dir / "input/data/train")),
        "validation": Path(
            os.environ.get("SM_CHANNEL_VALIDATION", base_dir / "input/data/validation")
        ),
        "tuned": Path(os.environ.get("SM_CHANNEL_TUNED", base_dir / "input/data/tuned")),
        "model": Path(os.environ.get("SM_MODEL_DIR", base_dir / "model")),
        "output": Path(os.environ.get("SM_OUTPUT_DATA_DIR", base_dir / "output/data")),
    }


def check_hyperparameters(args: argparse.Namespace) -> None:
    """Reject values XGBoost would reject with a less helpful message."""
    checks = [
        ("max-depth", args.max_depth >= 1, "at least 1"),
        ("eta", 0 < args.eta <= 1, "in (0, 1]"),
        ("subsample", 0 < args.subsample <= 1, "in (0, 1]"),
        ("colsample-bytree", 0 < args.colsample_bytree <= 1, "in (0, 1]"),
        ("num-round", args.num_round >= 1, "at least 1"),
        ("max-train-rows", args.max_train_rows >= 0, "0 (every row) or more"),
        ("early-stopping-rounds", args.early_stopping_rounds >= 1, "at least 1"),
        ("min-rounds", args.min_rounds >= 1, "at least 1"),
        ("nthread", args.nthread >= 1, "at least 1"),
    ]
    if args.scale_pos_weight not in WEIGHT_MODES:
        try:
            ok = float(args.scale_pos_weight) > 0
        except ValueError:
            ok = False
        checks.append(("scale-pos-weight", ok, f"a positive number or one of {WEIGHT_MODES}"))
    for name, ok, expected in checks:
        if not ok:
            value = getattr(args, name.replace("-", "_"))
            raise TrainingError(f"hyperparameter --{name} must be {expected} (got {value}).")


# --- reading -----------------------------------------------------------------


def read_channel(name: str, directory: Path) -> Channel:
    """Read ``feature_set.json`` and the feature and label columns of every .parquet file.

    Straight from Parquet into one float32 matrix (no data frame in between);
    rejects missing columns, infinite values and labels other than 0/1.
    """
    meta_path = directory / FEATURE_SET_FILE
    if not meta_path.is_file():
        raise TrainingError(
            f"{meta_path} not found: the {name} channel must hold the output of "
            "processing/preprocess.py (data.parquet and feature_set.json)."
        )
    feature_set = json.loads(meta_path.read_text())
    files = sorted(directory.glob("*.parquet"))
    if not files:
        raise TrainingError(f"no .parquet file in the {name} channel {directory}.")
    features = list(feature_set["feature_columns"])
    label = feature_set["label_column"]
    for path in files:
        missing = [c for c in [*features, label] if c not in pq.read_schema(path).names]
        if missing:
            raise TrainingError(f"the {name} data {path.name} lacks columns {missing}; "
                                "re-run preprocess.")
    table = pa.concat_tables([pq.read_table(p, columns=[*features, label]) for p in files])
    if table.num_rows == 0:
        raise TrainingError(f"the {name} channel {directory} has no rows; widen its window.")
    values = np.empty((table.num_rows, len(features)), np.float32)
    for index, feature in enumerate(features):
        values[:, index] = table[feature].to_numpy(zero_copy_only=False)
    infinite = np.isinf(values)
    if infinite.any():
        row, col = np.argwhere(infinite)[0]
        raise TrainingError(
            f"{name} row {row} feature {features[col]!r} is infinite; the features "
            "job must produce finite values or null (missing)."
        )
    labels = table[label].to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isin(labels, (0, 1)).all():
        raise TrainingError(f"the {name} label {label!r} must be 0 or 1 on every row.")
    return Channel(name, values, labels, feature_set)


def feature_matrix(channel: Channel, args: argparse.Namespace, weights: np.ndarray | None = None,
                   ref: xgb.QuantileDMatrix | None = None) -> xgb.QuantileDMatrix:
    """The binned matrix XGBoost's ``hist`` method trains on, built once.

    A validation matrix takes the train matrix as ``ref`` so both share its bins.
    NaN is XGBoost's missing value: each split learns a default direction for it.
    Categorical user features arrive as codes (preprocess); XGBoost splits them natively.
    """
    features = list(channel.feature_set["feature_columns"])
    return xgb.QuantileDMatrix(
        channel.values, label=channel.labels, weight=weights, feature_names=features,
        feature_types=feature_types(channel.feature_set, features), enable_categorical=True,
        max_bin=args.max_bin, ref=ref, nthread=args.nthread)


def fit_rows(channel: Channel, limit: int, seed: int) -> tuple[Channel, np.ndarray | None, str]:
    """The rows to boost on: all, or every fraud and a share of the rest weighted by its
    inverse, so losses, ``min_child_weight`` and early stopping see the same totals."""
    rows, share = weighted_sample(channel.labels, limit or channel.rows, seed)
    if share >= 1:
        return channel, None, f"all {channel.rows} {channel.name} rows"
    weights = np.where(channel.labels[rows] == 1, 1.0, 1.0 / share).astype(np.float32)
    note = (f"{len(rows)} of {channel.rows} {channel.name} rows (every fraud, {share:.1%} "
            "of the rest, weighted)")
    return channel.take(rows), weights, note


def feature_types(feature_set: dict, features: list[str]) -> list[str]:
    """``c`` for the categorical features the feature set names, ``q`` for the others."""
    categorical = set(feature_set.get("categorical_features") or [])
    return ["c" if name in categorical else "q" for name in features]


def resolve_scale_pos_weight(mode: str, negatives: int, positives: int) -> float:
    """``balanced`` -> negatives/positives, ``sqrt`` -> its square root, else the number."""
    if mode == "balanced":
        return negatives / positives
    if mode == "sqrt":
        return float(np.sqrt(negatives / positives))
    return float(mode)


def class_counts(labels: np.ndarray) -> tuple[int, int]:
    """(negatives, positives)."""
    positives = int(labels.sum())
    return len(labels) - positives, positives


# --- training ----------------------------------------------------------------


def booster_params(args: argparse.Namespace, scale_pos_weight: float) -> dict:
    """The XGBoost parameter dict (hist trees, logistic objective, aucpr metric)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": EVAL_METRIC,
        "tree_method": "hist",
        "max_depth": args.max_depth,
        "eta": args.eta,
        "subsample": args.subsample,
        "colsample_bytree": args.colsample_bytree,
        "min_child_weight": args.min_child_weight,
        "gamma": args.gamma,
        "lambda": args.__dict__["lambda"],
        "alpha": args.alpha,
        "max_bin": args.max_bin,
        "scale_pos_weight": scale_pos_weight,
        "nthread": args.nthread,
        "seed": args.seed,
    }


class EarlyStoppingAfterWarmup(xgb.callback.EarlyStopping):
    """Early stopping that neither stops nor picks a best round before ``min_rounds``.

    Validation windows of fraud data hold few positives (30-60 in a week of a
    small portfolio), so validation aucpr is noisy: its maximum can fall on
    round 5-15 by chance, leaving a badly under-fitted model. Measured on the
    handbook simulator (5 seeds, 40k rows): the plain rule kept 11-13 rounds on
    two seeds, test AP 0.25 where 50+ rounds gave 0.77.
    """

    def __init__(self, min_rounds: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.min_rounds = min_rounds

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        if epoch + 1 < self.min_rounds:
            return False  # warm-up: the first tracked round is round min_rounds
        return super().after_iteration(model, epoch, evals_log)


def train_booster(
    params: dict, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix, args: argparse.Namespace
) -> tuple[xgb.Booster, dict]:
    """Boost until validation aucpr stops improving (after ``min_rounds``); keep the best."""
    history: dict = {}
    stopper = EarlyStoppingAfterWarmup(
        # A quick run with fewer --num-round than the default warm-up keeps every round.
        min_rounds=min(args.min_rounds, args.num_round),
        rounds=args.early_stopping_rounds,
        metric_name=EVAL_METRIC,
        data_name="validation",
        maximize=True,
        save_best=True,  # the saved model is exactly the best iteration's trees
    )
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=args.num_round,
        # Only validation each round: scoring the (large) train set every round
        # doubled training time; its aucpr is computed once, at the best iteration.
        evals=[(dvalid, "validation")],
        evals_result=history,
        verbose_eval=args.verbose_eval if args.verbose_eval > 0 else False,
        callbacks=[stopper],
    )
    return booster, history


# --- writing -----------------------------------------------------------------


def write_atomically(path: Path, write) -> None:
    """Write through a temporary sibling so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=str)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def model_feature_set(feature_set: dict) -> dict:
    """The feature set as the model sees it (the split description stays in metadata)."""
    return {key: value for key, value in feature_set.items() if key != "split"}


def metric_of(booster: xgb.Booster, dmatrix: xgb.DMatrix, name: str) -> float:
    """``eval_metric`` of ``booster`` on one data set (parses ``[0]\tname-aucpr:0.5``)."""
    text = booster.eval_set([(dmatrix, name)])
    return float(text.split(f"{name}-{EVAL_METRIC}:")[1].split()[0])


def build_metadata(
    args: argparse.Namespace,
    params: dict,
    booster: xgb.Booster,
    history: dict,
    train: Channel,
    valid: Channel,
    counts: dict,
    train_aucpr: float,
) -> dict:
    """Everything a reviewer needs to reproduce or audit the training run."""
    rounds_run = len(history["validation"][EVAL_METRIC])
    best_iteration = int(booster.best_iteration)
    return {
        "hyperparameters": {
            **params,
            "num_round": args.num_round,
            "early_stopping_rounds": args.early_stopping_rounds,
            "min_rounds": args.min_rounds,
            "max_train_rows": args.max_train_rows,
            "scale_pos_weight_mode": args.scale_pos_weight,
        },
        "best_iteration": best_iteration,
        "best_ntree_limit": best_iteration + 1,
        "rounds_run": rounds_run,
        "stopped_early": rounds_run < args.num_round,
        "validation_aucpr": float(booster.best_score),
        "train_aucpr_at_best": train_aucpr,
        "windows": {
            "train": train.feature_set.get("split", {}).get("window"),
            "validation": valid.feature_set.get("split", {}).get("window"),
        },
        "label_delay_days": train.feature_set.get("split", {}).get("label_delay_days"),
        "rows": counts,
        "xgboost_version": xgb.__version__,
        "feature_set_version": train.feature_set.get("version"),
        "feature_columns": train.feature_set["feature_columns"],
    }


# --- model selection and refit ------------------------------------------------


def read_pair(dirs: dict[str, Path]) -> tuple[Channel, Channel, list[str], str]:
    """The train and validation channels, their feature list and label."""
    train = read_channel("train", dirs["train"])
    valid = read_channel("validation", dirs["validation"])
    check_same_features(train, valid)
    return train, valid, list(train.feature_set["feature_columns"]), train.feature_set[
        "label_column"]


def with_values(args: argparse.Namespace, values: dict) -> argparse.Namespace:
    """``args`` with some hyperparameters replaced (names as in the tuning ranges)."""
    return argparse.Namespace(**{**vars(args), **{k.replace("-", "_"): v
                                                  for k, v in values.items()}})


def run_search(args: argparse.Namespace, spec: dict) -> dict:
    """Model selection on the validation window in this process (``search.py``)."""
    started = time.monotonic()
    dirs = channel_dirs(args.base_dir)
    train, valid, features, label = read_pair(dirs)
    labels = train.labels
    sample, weights, note = fit_rows(train, SEARCH_ROWS, args.seed)
    dtrain = feature_matrix(sample, args, weights)
    dvalid = feature_matrix(valid, args, ref=dtrain)
    if not (labels == 1).any() or not (valid.labels == 1).any():
        raise TrainingError("model selection needs frauds in the train and validation windows; "
                            "widen them in preprocess.")
    ranges = parse_ranges(spec.get("ranges") or {})
    defaults = {r.name: vars(args)[r.name.replace("-", "_")] for r in ranges}
    budget = float(spec.get("max_seconds") or math.inf)
    spw = resolve_scale_pos_weight(args.scale_pos_weight, *class_counts(labels))
    print(f"model selection: up to {spec.get('max_jobs')} trials in {budget:g} s on {note}, "
          f"objective {spec.get('objective')} on {valid.rows} validation rows", flush=True)
    search = Search(SearchData(dtrain, dvalid, valid.labels, note),
                    lambda values: booster_params(with_values(args, values), spw),
                    args.num_round, args.min_rounds, args.early_stopping_rounds, budget)
    trials = search.run(candidates(ranges, defaults, int(spec.get("max_jobs") or 1),
                                   int(spec.get("seed") or args.seed)))
    best = trials[0]
    defaults_trial = next(t for t in trials if t.index == 1)
    seconds = time.monotonic() - started
    tuning = {
        "objective": spec.get("objective"),
        "method": "successive halving, one process (local executor)",
        "requested_strategy": spec.get("strategy"),
        "max_jobs": spec.get("max_jobs"),
        "budget_seconds": budget if math.isfinite(budget) else None,
        "budget_spent": search.budget_spent,
        "seconds": round(seconds, 1),
        "search_rows": note,
        "trials_run": len(trials),
        "chosen": best.values,
        "chosen_trial": best.index,
        "rounds": best.best_rounds,
        "validation_average_precision": round(best.objective, 6),
        "defaults_validation_average_precision": round(defaults_trial.objective, 6),
        "summary": (f"{len(trials)} trial(s) in {seconds:.0f} s: validation AP "
                    f"{best.objective:.3f} (defaults {defaults_trial.objective:.3f})"),
        "trials": [t.summary() for t in trials],
    }
    booster = best.booster[: best.best_rounds]
    metadata = {
        "hyperparameters": booster_params(with_values(args, best.values), spw),
        "best_iteration": best.best_rounds - 1,
        "best_ntree_limit": best.best_rounds,
        "rounds_run": best.rounds,
        "validation_average_precision": best.objective,
        "tuning": tuning,
        "windows": {name: c.feature_set.get("split", {}).get("window")
                    for name, c in (("train", train), ("validation", valid))},
        "label_delay_days": train.feature_set.get("split", {}).get("label_delay_days"),
        "xgboost_version": xgb.__version__,
        "feature_set_version": train.feature_set.get("version"),
        "feature_columns": features,
    }
    write_model(dirs, booster, train.feature_set, metadata)
    return metadata


def read_tuned(directory: Path) -> dict:
    """The training metadata of the tuned trial: its model.tar.gz (the TuningStep's best
    training job) or a training_metadata.json in the ``tuned`` channel."""
    if (directory / METADATA_FILE).is_file():
        return json.loads((directory / METADATA_FILE).read_text())
    for archive in sorted(directory.glob("*.tar.gz")):
        with tarfile.open(archive, "r:gz") as tar:
            member = next((m for m in tar.getmembers()
                           if m.isfile() and Path(m.name).name == METADATA_FILE), None)
            if member is not None:
                return json.loads(tar.extractfile(member).read())
    raise TrainingError(
        f"--refit needs the tuned trial's model in the 'tuned' channel ({directory}): a "
        f"model.tar.gz holding {METADATA_FILE}, as the TuningStep's best training job writes."
    )


def run_refit(args: argparse.Namespace) -> dict:
    """Fit the tuned hyperparameters on train + validation, for the tuned number of rounds."""
    dirs = channel_dirs(args.base_dir)
    train, valid, features, label = read_pair(dirs)
    tuned = read_tuned(dirs["tuned"])
    rounds = int(tuned["best_iteration"]) + 1
    both = concat_channels("train and validation", [train, valid])
    neg, pos = class_counts(both.labels)
    if pos == 0 or neg == 0:
        raise TrainingError(f"train and validation hold {pos} fraud and {neg} genuine rows; "
                            "both classes are needed. Widen the windows in preprocess.")
    started = time.monotonic()
    sample, weights, note = fit_rows(both, args.max_train_rows, args.seed)
    dall = feature_matrix(sample, args, weights)
    binned = time.monotonic()
    params = booster_params(args, resolve_scale_pos_weight(args.scale_pos_weight, neg, pos))
    print(f"refit on {note} ({pos} fraud), {len(features)} features, {rounds} rounds "
          "(the tuned trial's early stopping)", flush=True)
    booster = xgb.train(params, dall, num_boost_round=rounds)
    seconds = {"matrix": binned - started, "boosting": time.monotonic() - binned}
    metadata = {
        "hyperparameters": {**params, "scale_pos_weight_mode": args.scale_pos_weight},
        "best_iteration": rounds - 1,
        "best_ntree_limit": rounds,
        "rounds_run": rounds,
        "stopped_early": False,
        "refit": {"rows": both.rows, "frauds": pos, "windows": ["train", "validation"],
                  "fit_rows": note},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "validation_aucpr": tuned.get("validation_aucpr"),
        "validation_average_precision": tuned.get("validation_average_precision"),
        "tuning": tuned.get("tuning"),
        "windows": {name: c.feature_set.get("split", {}).get("window")
                    for name, c in (("train", train), ("validation", valid))},
        "label_delay_days": train.feature_set.get("split", {}).get("label_delay_days"),
        "rows": {"train": {"rows": train.rows}, "validation": {"rows": valid.rows}},
        "xgboost_version": xgb.__version__,
        "feature_set_version": train.feature_set.get("version"),
        "feature_columns": features,
    }
    write_model(dirs, booster, train.feature_set, metadata)
    return metadata


# --- entry point -------------------------------------------------------------


def check_same_features(train: Channel, valid: Channel) -> None:
    if train.feature_set["feature_columns"] != valid.feature_set["feature_columns"]:
        raise TrainingError(
            "the train and validation channels list different feature_columns; "
            "they must come from the same preprocess run."
        )


def run(args: argparse.Namespace) -> dict:
    """Train, save the model artefacts and return the metadata.

    Three modes: one trial (train on the train window, early stopping on the
    validation window: what each SageMaker tuning trial runs), the local model
    selection (``--fraudops-tuning-search``) and the refit (``--refit true``).
    """
    check_hyperparameters(args)
    if args.fraudops_tuning_search:
        return run_search(args, json.loads(args.fraudops_tuning_search))
    if args.refit:
        return run_refit(args)
    dirs = channel_dirs(args.base_dir)
    started = time.monotonic()
    train, valid, features, _ = read_pair(dirs)
    read = time.monotonic()
    neg, pos = class_counts(train.labels)
    vneg, vpos = class_counts(valid.labels)
    if pos == 0 or neg == 0:
        raise TrainingError(
            f"the train window has {pos} fraud and {neg} genuine rows; both classes are "
            "needed. Widen --train-days or move --train-start in preprocess."
        )
    if vpos == 0:
        raise TrainingError(
            "the validation window has no fraud rows, so aucpr cannot drive early stopping. "
            "Widen --validation-days in preprocess."
        )
    sample, weights, note = fit_rows(train, args.max_train_rows, args.seed)
    dtrain = feature_matrix(sample, args, weights)
    dvalid = feature_matrix(valid, args, ref=dtrain)
    binned = time.monotonic()
    scale_pos_weight = resolve_scale_pos_weight(args.scale_pos_weight, neg, pos)
    params = booster_params(args, scale_pos_weight)
    print(
        f"training on {note} ({pos} fraud), validating on {valid.rows} rows ({vpos} fraud), "
        f"{len(features)} features, scale_pos_weight={scale_pos_weight:.3f}, "
        f"nthread={args.nthread}",
        flush=True,
    )
    booster, history = train_booster(params, dtrain, dvalid, args)
    boosted = time.monotonic()

    counts = {
        "train": {"rows": train.rows, "frauds": pos, "fit_rows": note},
        "validation": {"rows": valid.rows, "frauds": vpos},
    }
    train_aucpr = metric_of(booster, dtrain, "train")
    metadata = build_metadata(args, params, booster, history, train, valid, counts, train_aucpr)
    metadata["seconds"] = {"read": round(read - started, 2), "matrix": round(binned - read, 2),
                           "boosting": round(boosted - binned, 2)}
    # The tuning objective (what a HyperparameterTuner trial reports): AP at the best round.
    metadata["validation_average_precision"] = average_precision(
        valid.labels, booster.predict(dvalid))
    write_model(dirs, booster, train.feature_set, metadata)
    write_json(dirs["output"] / HISTORY_FILE, history)
    return metadata


def write_model(dirs: dict[str, Path], booster: xgb.Booster, feature_set: dict,
                metadata: dict) -> None:
    """The model directory: booster, the feature set it reads, the training metadata."""
    model_dir = dirs["model"]
    write_atomically(model_dir / MODEL_FILE, lambda tmp: booster.save_model(str(tmp)))
    write_json(model_dir / FEATURE_SET_FILE, model_feature_set(feature_set))
    write_json(model_dir / METADATA_FILE, metadata)


def report(metadata: dict) -> None:
    """Print metrics in the ``name: value`` form SageMaker metric regexes parse."""
    print(f"best-iteration: {metadata['best_iteration']}")
    print(f"rounds-run: {metadata['rounds_run']}")
    for key, line in (("train_aucpr_at_best", "train-aucpr"),
                      ("validation_aucpr", "validation-aucpr"),
                      ("validation_average_precision", OBJECTIVE_LINE)):
        if metadata.get(key) is not None:
            print(f"{line}: {metadata[key]:.6f}")


def write_failure_reason(base_dir: Path, message: str) -> None:
    """SageMaker shows the contents of SM_OUTPUT_FAILURE as the job's FailureReason."""
    path = Path(os.environ.get("SM_OUTPUT_FAILURE", base_dir / "output" / "failure"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message)
    except OSError:
        pass  # the message is on stderr already; a read-only base must not mask it


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metadata = run(args)
    except TrainingError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        write_failure_reason(args.base_dir, str(exc))
        return 2
    report(metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
