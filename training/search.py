"""Model selection in one training process: what the local executor runs for a TuningStep.

SageMaker's HyperparameterTuner starts one training job per trial. Locally,
``train.py --fraudops-tuning-search SPEC`` runs the same search in one process,
so the data is read and binned once: the executor passes the tuning job's
parameter ranges, trial and time limits and objective as ``SPEC`` (JSON), and
reads the trials back from ``training_metadata.json``.

The search is successive halving (Jamieson & Talwalkar 2016; the idea behind
SageMaker's Hyperband strategy): every candidate, the defaults first, boosts a
few rounds; the best third by the objective continues three times as long, and
so on; the last survivors boost on with early stopping. Candidates are drawn at
random from the ranges (log-uniform where the range says Logarithmic) with a
fixed seed, so a run is reproducible. Work stops when the time budget is spent;
the defaults always finish their first rung, so a result always exists.

Large train windows are searched on a sample: every fraud and a random share of
the genuine transactions, the genuine ones weighted by the inverse of that share
so losses, leaf weights (``min_child_weight``) and early stopping see the same
totals as on all rows. The refit (``train.py --refit true``) then fits the
chosen values on every train and validation row.

The objective is average precision on the validation window, computed here as
scikit-learn's ``average_precision_score`` does (this unit ships without it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xgboost as xgb

SEARCH_HYPERPARAMETER = "fraudops-tuning-search"
OBJECTIVE_LINE = "validation-average-precision"
HALVING_RATE = 3  # keep the best third at each rung, give them three times the rounds
FIRST_RUNG_ROUNDS = 30
EVAL_EVERY = 10  # rounds between objective evaluations in the last rung
SEARCH_ROWS = 60_000  # larger train windows are searched on a weighted sample


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise average precision, ties grouped (scikit-learn's definition)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    positives = y.sum()
    if positives == 0:
        return 0.0
    last_of_ties = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    true_positives = np.cumsum(y)[last_of_ties]
    precision = true_positives / (last_of_ties + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- the search space (SageMaker ParameterRanges) ---------------------------------


@dataclass(frozen=True)
class Range:
    """One tunable hyperparameter: continuous, integer or categorical."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    values: tuple[str, ...] = ()

    def draw(self, rng: np.random.Generator) -> float | int | str:
        if self.kind == "categorical":
            return self.values[int(rng.integers(len(self.values)))]
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.kind == "integer":
            return int(min(self.high, max(self.low, round(value))))
        return float(f"{value:.4g}")


def parse_ranges(ranges: dict) -> list[Range]:
    """The ``ParameterRanges`` of a CreateHyperParameterTuningJob request."""
    parsed = []
    for kind, key in (("continuous", "ContinuousParameterRanges"),
                      ("integer", "IntegerParameterRanges")):
        for item in ranges.get(key) or []:
            low, high = float(item["MinValue"]), float(item["MaxValue"])
            log = item.get("ScalingType") in ("Logarithmic", "ReverseLogarithmic")
            if low > high or (log and low <= 0):
                raise ValueError(f"range {item['Name']}: [{low}, {high}] cannot be searched"
                                 + (" on a log scale" if log else ""))
            parsed.append(Range(item["Name"], kind, low, high, log))
    for item in ranges.get("CategoricalParameterRanges") or []:
        parsed.append(Range(item["Name"], "categorical", values=tuple(item["Values"])))
    return parsed


# --- trials -----------------------------------------------------------------------


@dataclass
class Trial:
    """One candidate: its tuned values, its booster so far and the best objective seen."""

    index: int
    values: dict[str, float | int | str]
    booster: xgb.Booster | None = None
    rounds: int = 0  # boosted so far
    best_rounds: int = 0
    objective: float = -1.0
    history: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False  # early stopping ended it

    def summary(self) -> dict:
        return {
            "trial": self.index,
            "hyperparameters": self.values,
            "rounds": self.best_rounds,
            "validation_average_precision": round(self.objective, 6),
            "rounds_boosted": self.rounds,
        }


@dataclass(frozen=True)
class SearchData:
    """The matrices the trials share and the validation labels the objective needs."""

    train: xgb.DMatrix
    valid: xgb.DMatrix
    valid_labels: np.ndarray
    sample_note: str


def weighted_sample(labels: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, float]:
    """Row indices of every fraud and a random share of the rest, and that share.

    Without sampling (few enough rows) every index and a share of 1.
    """
    if labels.size <= limit:
        return np.arange(labels.size), 1.0
    frauds = np.flatnonzero(labels == 1)
    genuine = np.flatnonzero(labels != 1)
    share = max(1, limit - frauds.size) / genuine.size
    kept = np.random.default_rng(seed).random(genuine.size) < share
    return np.sort(np.r_[frauds, genuine[kept]]), float(share)


class Search:
    """Successive halving over ``candidates`` within ``budget_seconds``."""

    def __init__(self, data: SearchData, params_for: Callable[[dict], dict],
                 max_rounds: int, min_rounds: int, patience: int, budget_seconds: float,
                 say: Callable[[str], None] = print) -> None:
        self.data = data
        self.params_for = params_for
        self.max_rounds = max_rounds
        self.min_rounds = min(min_rounds, max_rounds)
        self.patience = patience
        self.deadline = time.monotonic() + budget_seconds
        self.say = say
        self.budget_spent = False

    def out_of_time(self) -> bool:
        self.budget_spent = self.budget_spent or time.monotonic() > self.deadline
        return self.budget_spent

    def boost(self, trial: Trial, rounds: int) -> None:
        """Boost ``trial`` up to ``rounds`` in total and record the objective there.

        One booster per trial, updated in place (as ``xgb.train`` does inside one
        call): it keeps XGBoost's prediction caches of the train and validation
        matrices, so a round and a measurement cost only the trees added since the
        last. Continuing through ``xgb.train(xgb_model=...)`` copied the booster and
        recomputed every earlier tree on both matrices at each rung and measurement.
        """
        if trial.booster is None:
            trial.booster = xgb.Booster(self.params_for(trial.values),
                                        [self.data.train, self.data.valid])
        while trial.rounds < rounds:
            trial.booster.update(self.data.train, trial.rounds)
            trial.rounds += 1
        self.record(trial)

    def record(self, trial: Trial) -> None:
        # The whole model (no iteration_range), which the prediction cache serves.
        scores = trial.booster.predict(self.data.valid)
        objective = average_precision(self.data.valid_labels, scores)
        trial.history.append((trial.rounds, objective))
        # Warm-up: a round count below min_rounds is never the pick, but is still measured.
        if objective > trial.objective or trial.best_rounds < self.min_rounds:
            trial.objective, trial.best_rounds = objective, trial.rounds

    def finish(self, trial: Trial) -> None:
        """The last rung: boost on in steps, stop after ``patience`` rounds without gain."""
        while trial.rounds < self.max_rounds and not self.out_of_time():
            self.boost(trial, min(self.max_rounds, trial.rounds + EVAL_EVERY))
            if trial.rounds >= self.min_rounds and trial.rounds - trial.best_rounds >= \
                    self.patience:
                trial.stopped = True
                break

    def run(self, candidates: list[dict]) -> list[Trial]:
        """Every trial tried, best first; the defaults (``candidates[0]``) always run."""
        trials = [Trial(i + 1, values) for i, values in enumerate(candidates)]
        alive = trials
        rounds = min(FIRST_RUNG_ROUNDS, self.max_rounds)
        while True:
            for trial in alive:
                if trial.index > 1 and self.out_of_time():
                    break
                self.boost(trial, rounds)
            # Out of time part-way: the trials that reached the rung (else the best so far).
            measured = [t for t in alive if t.rounds >= rounds] or [
                max(alive, key=lambda t: t.objective)]
            measured.sort(key=lambda t: -t.objective)
            self.say(f"rung of {rounds} rounds: " + ", ".join(
                f"trial {t.index} {t.objective:.4f}" for t in measured))
            keep = max(1, len(measured) // HALVING_RATE)
            if keep == 1 or rounds * HALVING_RATE >= self.max_rounds or self.out_of_time():
                alive = measured[:1]
                break
            alive = measured[:keep]
            rounds *= HALVING_RATE
        self.finish(alive[0])
        return sorted((t for t in trials if t.rounds), key=lambda t: -t.objective)


def candidates(ranges: list[Range], defaults: dict, count: int, seed: int) -> list[dict]:
    """The defaults, then ``count - 1`` random draws from ``ranges``."""
    rng = np.random.default_rng(seed)
    drawn = [{r.name: defaults[r.name] for r in ranges}]
    while len(drawn) < count:
        drawn.append({r.name: r.draw(rng) for r in ranges})
    return drawn
