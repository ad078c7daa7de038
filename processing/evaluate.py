"""Score the test window and write the model-quality report.

Runs inside a SageMaker Processing container (or locally via ``--base-dir``);
ships as the ``processing/`` folder and uses only numpy, pandas, pyarrow
and xgboost (the ranking metrics are computed here exactly as scikit-learn
computes them, without its 1.2 s import).

Inputs:
    <base>/processing/model/model.tar.gz   the training job's output (xgboost-model.json,
                                           feature_set.json, training_metadata.json)
    <base>/processing/test/                data.parquet + feature_set.json from preprocess
Outputs:
    <base>/processing/evaluation/evaluation.json     SageMaker model-quality style metrics
    <base>/processing/evaluation/test_scores.parquet transaction_id, customer_id, timestamp,
                                                     is_fraud, score

Metrics (Le Borgne et al., "Reproducible Machine Learning for Credit Card
Fraud Detection", ch. 4): average precision and ROC AUC over all test
transactions; card precision@k, the daily share of fraudulent cards among the
k cards investigators can check, averaged over test days; precision and recall
of the alert threshold.

``--alert-threshold`` is required: the pipeline passes its ``AlertThreshold``
parameter (default in ``pipelines.core.params``). A model trained with
--scale-pos-weight has inflated scores; raise the threshold accordingly. Card
precision@k needs no threshold: it ranks.

``evaluation.json`` carries the run parameters onward: ``alert_threshold`` and,
under ``model``, the ``label_delay_days`` and ``feature_set_version`` the model
was trained with. The Register step copies the three into the model package's
CustomerMetadataProperties, where scoring and alerting read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

# xgboost imports scikit-learn whenever it is installed, for wrappers this script never
# uses (over a second of start-up); run as a script, it is told sklearn is absent. Not
# when imported: tests import this module into processes that use sklearn.
if __name__ == "__main__":
    sys.modules.setdefault("sklearn", None)  # type: ignore[assignment]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xgboost as xgb  # noqa: E402

MODEL_ARCHIVE = "model.tar.gz"
MODEL_FILE = "xgboost-model.json"
FEATURE_SET_FILE = "feature_set.json"
METADATA_FILE = "training_metadata.json"
DATA_FILE = "data.parquet"
EVALUATION_FILE = "evaluation.json"
SCORES_FILE = "test_scores.parquet"
KNOWN_FRAUDS_FILE = "known_frauds.parquet"  # written beside the test split by preprocess
SCORE_COLUMNS = ("transaction_id", "customer_id", "timestamp")
MAX_CURVE_POINTS = 200


class EvaluationError(Exception):
    """A user-fixable problem with the model archive or the test data."""


# --- loading -----------------------------------------------------------------


def safe_extract(archive: Path, target: Path) -> None:
    """Extract regular files only, refusing absolute paths and ``..`` (tar slip)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise EvaluationError(f"{archive} holds an unsafe path {member.name!r}.")
                if not (member.isfile() or member.isdir()):
                    raise EvaluationError(
                        f"{archive} holds a link or device {member.name!r}; expected files only."
                    )
            # Members are checked above; the "data" filter (Python >= 3.12, backported to
            # security releases) adds the standard library's own checks where available.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **extra)
    except tarfile.TarError as exc:
        raise EvaluationError(
            f"{archive} is not a readable tar.gz ({exc}); pass the training job's model.tar.gz."
        ) from exc


def find_file(root: Path, name: str, archive: Path) -> Path:
    """The one ``name`` inside the extracted archive (at its root or in a sub-folder)."""
    matches = sorted(root.rglob(name))
    if not matches:
        raise EvaluationError(
            f"{archive} contains no {name}; it must be the output of training/train.py."
        )
    return matches[0]


def load_model(archive: Path) -> tuple[xgb.Booster, dict, dict]:
    """Booster, feature set and training metadata from ``model.tar.gz``."""
    if not archive.is_file():
        raise EvaluationError(f"{archive} not found: the training step's model.tar.gz goes there.")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        safe_extract(archive, root)
        booster = xgb.Booster()
        booster.load_model(str(find_file(root, MODEL_FILE, archive)))
        feature_set = json.loads(find_file(root, FEATURE_SET_FILE, archive).read_text())
        metadata_matches = sorted(root.rglob(METADATA_FILE))
        metadata = json.loads(metadata_matches[0].read_text()) if metadata_matches else {}
    return booster, feature_set, metadata


def load_test(test_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The test window frame and the feature set preprocess wrote beside it."""
    data_path, meta_path = test_dir / DATA_FILE, test_dir / FEATURE_SET_FILE
    for path in (data_path, meta_path):
        if not path.is_file():
            raise EvaluationError(
                f"{path} not found: the test directory must hold preprocess's output."
            )
    return pd.read_parquet(data_path), json.loads(meta_path.read_text())


# --- scoring -----------------------------------------------------------------


def score(booster: xgb.Booster, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Fraud scores for every row, in the model's feature order."""
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise EvaluationError(
            f"the test data lacks model features {missing}; preprocess and training must use "
            "the same feature set version."
        )
    matrix = xgb.DMatrix(frame[features].to_numpy(dtype=np.float64), feature_names=features)
    return booster.predict(matrix).astype(np.float64)


# --- metrics -----------------------------------------------------------------


def card_precision_at_k(
    days: pd.Series,
    cards: pd.Series,
    labels: pd.Series,
    scores: pd.Series,
    k: int,
    remove_detected: bool = True,
    known_at: pd.Series | None = None,
) -> tuple[float, list[dict]]:
    """Mean over days of the share of fraudulent cards among the day's top-k cards.

    Per day each card is ranked by its highest transaction score; a card is
    fraudulent that day if any of its transactions is. The denominator is k,
    the investigators' capacity, even on days with fewer cards (unused capacity
    is not a success). As in the handbook, cards found compromised on an
    earlier day are blocked and leave the ranking of later days
    (``remove_detected``). ``known_at`` (card -> when its fraud became known)
    also removes, each day, the cards already known to be compromised by then:
    their frauds were labelled before the day, so they are blocked, not found.
    """
    frame = pd.DataFrame(
        {"day": days.to_numpy(), "card": cards.to_numpy(), "y": labels.to_numpy(), "s": scores}
    )
    detected: set = set()
    per_day = []
    for day, group in frame.groupby("day", sort=True):
        if remove_detected and detected:
            group = group[~group["card"].isin(detected)]
        if known_at is not None:
            group = group[~group["card"].isin(known_at.index[known_at <= day])]
        by_card = group.groupby("card").agg(s=("s", "max"), y=("y", "max"))
        top = by_card.sort_values("s", ascending=False, kind="stable").head(k)
        found = top.index[top["y"] == 1]
        fraud_cards = int((by_card["y"] == 1).sum())
        per_day.append(
            {
                "day": str(pd.Timestamp(day).date()),
                "precision": len(found) / k,
                "fraud_cards_found": len(found),
                "fraud_cards": fraud_cards,
                # A perfect ranking's score: days with fewer than k fraud cards cap it.
                "best_possible": min(fraud_cards, k) / k,
            }
        )
        detected.update(found)
    mean = float(np.mean([entry["precision"] for entry in per_day])) if per_day else 0.0
    return mean, per_day


def counts_at_thresholds(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives of alerting on ``score >= t`` at each distinct score ``t``,
    highest first, and those thresholds (scikit-learn's ``confusion_matrix_at_thresholds``
    without weights: ties form one point; float64 running sums)."""
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_labels = scores[order], labels[order].astype(np.float64)
    last_of_ties = np.r_[np.flatnonzero(np.diff(ranked_scores)), ranked_labels.size - 1]
    true_positives = np.cumsum(ranked_labels)[last_of_ties]
    false_positives = 1 + last_of_ties.astype(np.float64) - true_positives
    return false_positives, true_positives, ranked_scores[last_of_ties]


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall (decreasing, ending at 1 and 0) and thresholds (increasing), as
    ``sklearn.metrics.precision_recall_curve``; the test window always holds a fraud."""
    false_positives, true_positives, thresholds = counts_at_thresholds(labels, scores)
    precision = true_positives / (true_positives + false_positives)  # never 0/0: >= 1 alert
    recall = true_positives / true_positives[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve (scikit-learn's definition)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def roc_auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule, over the points scikit-learn's
    ``roc_curve`` keeps (corners only), so the sum runs in the same order."""
    false_positives, true_positives, _ = counts_at_thresholds(labels, scores)
    if false_positives.size > 2:
        corners = np.r_[True, np.logical_or(np.diff(false_positives, 2),
                                            np.diff(true_positives, 2)), True]
        false_positives, true_positives = false_positives[corners], true_positives[corners]
    fpr = np.r_[0.0, false_positives] / false_positives[-1]
    tpr = np.r_[0.0, true_positives] / true_positives[-1]
    return float(np.trapezoid(tpr, fpr))


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision and recall of alerting on ``score >= threshold``."""
    alerts = scores >= threshold
    true_positives = int((alerts & (labels == 1)).sum())
    n_alerts = int(alerts.sum())
    n_fraud = int((labels == 1).sum())
    return {
        # No alert at all means no wrong alert: report 0 rather than undefined.
        "precision": true_positives / n_alerts if n_alerts else 0.0,
        "recall": true_positives / n_fraud if n_fraud else 0.0,
        "alerts": n_alerts,
        "true_positives": true_positives,
    }


def downsample_curve(labels: np.ndarray, scores: np.ndarray, limit: int) -> dict:
    """Precision/recall/threshold triples, at most ``limit`` evenly spaced along the curve."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # precision/recall have one more point than thresholds (recall 0); align on thresholds.
    count = len(thresholds)
    index = np.unique(np.linspace(0, count - 1, num=min(limit, count)).round().astype(int))
    return {
        "precision": [round(float(v), 6) for v in precision[index]],
        "recall": [round(float(v), 6) for v in recall[index]],
        "thresholds": [round(float(v), 6) for v in thresholds[index]],
    }


def card_precision_block(per_day: list[dict], mean: float, k: int, remove_detected: bool) -> dict:
    return {
        "value": mean,
        "k": k,
        "remove_detected_cards": remove_detected,
        "best_possible": float(np.mean([d["best_possible"] for d in per_day])),
        "standard_deviation": float(np.std([d["precision"] for d in per_day])),
    }


def compute_metrics(
    scored: pd.DataFrame, label: str, threshold: float, k: int, remove_detected: bool,
    known_at: pd.Series | None = None,
) -> dict:
    """The ``binary_classification_metrics`` block plus supporting detail.

    Card precision@k needs card ids: without any (a file with no customer or
    card column) its value is null. ``known_at`` adds the variant without
    the cards known to be compromised (``card_precision_at_k_known_removed``).
    """
    labels = scored[label].to_numpy().astype(int)
    scores = scored["score"].to_numpy()
    n_fraud = int(labels.sum())
    if n_fraud == 0 or n_fraud == len(labels):
        raise EvaluationError(
            f"the test window has {n_fraud} fraud rows out of {len(labels)}; AP and ROC AUC "
            "need both classes. Widen --test-days in preprocess."
        )
    days = pd.to_datetime(scored["timestamp"], utc=True).dt.tz_convert(None).dt.floor("D")
    with_cards = scored["customer_id"].notna().to_numpy()
    cards: dict[str, dict | None] = {"card_precision_at_k": None,
                                     "card_precision_at_k_known_removed": None}
    per_day: list[dict] = []
    if with_cards.any():
        rows = (days[with_cards], scored["customer_id"][with_cards], scored[label][with_cards],
                scores[with_cards], k, remove_detected)
        cp_k, per_day = card_precision_at_k(*rows)
        cards["card_precision_at_k"] = card_precision_block(per_day, cp_k, k, remove_detected)
        if known_at is not None:
            known, known_days = card_precision_at_k(*rows, known_at=known_at)
            cards["card_precision_at_k_known_removed"] = {
                **card_precision_block(known_days, known, k, remove_detected),
                "known_compromised_cards": int(len(known_at)),
            }
    at_threshold = threshold_metrics(labels, scores, threshold)
    return {
        "binary_classification_metrics": {
            "average_precision": {
                "value": float(average_precision_score(labels, scores)),
                "standard_deviation": "NaN",
            },
            "roc_auc": {"value": float(roc_auc_score(labels, scores)), "standard_deviation": "NaN"},
            "card_precision_at_k": cards["card_precision_at_k"] or {
                "value": None, "k": k, "best_possible": None,
                "note": "no card ids (customer_id) in the data"},
            **({"card_precision_at_k_known_removed": cards["card_precision_at_k_known_removed"]}
               if cards["card_precision_at_k_known_removed"] else {}),
            "precision_at_threshold": {
                "value": at_threshold["precision"],
                "threshold": threshold,
                "standard_deviation": "NaN",
            },
            "recall_at_threshold": {
                "value": at_threshold["recall"],
                "threshold": threshold,
                "standard_deviation": "NaN",
            },
        },
        "alerts_at_threshold": at_threshold["alerts"],
        "card_precision_at_k_per_day": per_day,
        "n_test": len(labels),
        "n_fraud": n_fraud,
        "pr_curve": downsample_curve(labels, scores, MAX_CURVE_POINTS),
    }


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


def run_parameters(model_features: dict, test_features: dict) -> dict:
    """The model's feature set version and label delay, checked against the test window's."""
    version, delay = model_features.get("version"), model_features.get("label_delay_days")
    if not version or isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise EvaluationError(
            f"the model's {FEATURE_SET_FILE} records version {version!r} and label_delay_days "
            f"{delay!r}; both are needed to register the model. Retrain on a feature table "
            "built by the current features job."
        )
    test_delay = test_features.get("split", {}).get("label_delay_days", delay)
    if test_delay != delay or test_features.get("version", version) != version:
        raise EvaluationError(
            f"the test window (feature set {test_features.get('version')}, label delay "
            f"{test_delay}) does not come from the split the model was trained on (feature set "
            f"{version}, label delay {delay}); evaluate on the same preprocess run's test output."
        )
    return {"feature_set_version": version, "label_delay_days": delay}


def tuning_record(metadata: dict) -> dict | None:
    """What model selection chose and how (the training metadata's ``tuning``), with the
    rows the final model was refitted on; None for a model trained without it."""
    tuning = metadata.get("tuning")
    if not tuning:
        return None
    return {**tuning, "refit": metadata.get("refit"),
            "hyperparameters": metadata.get("hyperparameters")}


def known_compromised(test_dir: Path, split: dict) -> pd.Series | None:
    """Card -> when it became known to be compromised: its first fraud plus the label
    delay the split left out (preprocess's ``known_frauds.parquet``); None without it."""
    path = test_dir / KNOWN_FRAUDS_FILE
    if not path.is_file():
        return None
    frauds = pd.read_parquet(path)
    gap = pd.Timedelta(hours=float(split.get("label_delay_gap_hours",
                                             24 * split.get("label_delay_days", 0))))
    first = pd.to_datetime(frauds["first_fraud"], utc=True).dt.tz_convert(None)
    return pd.Series((first + gap).to_numpy(), index=frauds["customer_id"].to_numpy())


def describe_test_window(frame: pd.DataFrame, feature_set: dict) -> dict:
    """The window preprocess recorded, else the span of the test timestamps."""
    window = feature_set.get("split", {}).get("window")
    if window:
        return {key: window[key] for key in ("start", "end", "days") if key in window}
    days = pd.to_datetime(frame["timestamp"], utc=True).dt.date
    return {"start": str(days.min()), "end": str(days.max())}


# --- entry point -------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--base-dir", type=Path, default=Path("/opt/ml"))
    parser.add_argument("--alert-threshold", "--alert_threshold", type=float, required=True,
                        help="score at or above which a transaction alerts (AlertThreshold)")
    parser.add_argument("--k", type=int, default=100, help="investigators' daily card capacity")
    parser.add_argument(
        "--keep-detected-cards",
        "--keep_detected_cards",
        action="store_true",
        help="keep cards found fraudulent on earlier test days in later days' rankings",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Score the test window, compute metrics, write evaluation.json and test scores."""
    if args.k < 1:
        raise EvaluationError(f"--k must be at least 1 (got {args.k}).")
    if not 0.0 <= args.alert_threshold <= 1.0:  # also refuses NaN
        raise EvaluationError(f"--alert-threshold must be in [0, 1] (got {args.alert_threshold}).")
    processing = args.base_dir / "processing"
    booster, model_features, metadata = load_model(processing / "model" / MODEL_ARCHIVE)
    frame, test_features = load_test(processing / "test")
    label = test_features.get("label_column", "is_fraud")
    features = list(model_features["feature_columns"])
    carried = run_parameters(model_features, test_features)

    scored = frame[[*SCORE_COLUMNS, label]].copy()
    scored["score"] = score(booster, frame, features)
    scored = scored.rename(columns={label: "is_fraud"})
    split = test_features.get("split", {})
    report = {
        **compute_metrics(
            scored, "is_fraud", args.alert_threshold, args.k, not args.keep_detected_cards,
            known_compromised(processing / "test", split),
        ),
        "alert_threshold": args.alert_threshold,
        "test_window": describe_test_window(frame, test_features),
        "split": {key: split[key] for key in ("windows", "method", "note", "label_delay_days",
                                              "label_delay_gap_hours") if key in split},
        "model": {
            **carried,
            "xgboost_version": metadata.get("xgboost_version"),
            "best_iteration": metadata.get("best_iteration"),
            "validation_aucpr": metadata.get("validation_aucpr"),
            "validation_average_precision": metadata.get("validation_average_precision"),
            # Model selection: the chosen hyperparameters, the trials, the refit's rows.
            "tuning": tuning_record(metadata),
        },
    }
    out_dir = processing / "evaluation"
    write_atomically(out_dir / SCORES_FILE, lambda tmp: scored.to_parquet(tmp, index=False))
    text = json.dumps(report, indent=2)
    write_atomically(out_dir / EVALUATION_FILE, lambda tmp: tmp.write_text(text))
    return report


def print_report(report: dict) -> None:
    """One ``name: value`` line per headline metric."""
    metrics = report["binary_classification_metrics"]
    window = report["test_window"]
    print(
        f"test window {window.get('start')}..{window.get('end')}: {report['n_test']} rows, "
        f"{report['n_fraud']} fraud"
    )
    for name, entry in metrics.items():
        value = "n/a" if entry["value"] is None else f"{entry['value']:.6f}"
        print(f"{name.replace('_', '-')}: {value}")
    print(f"alerts-at-threshold: {report['alerts_at_threshold']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except EvaluationError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
