"""Population Stability Index (PSI) of model inputs: recent days versus training.

For each feature the training values are cut into (up to) ``bins`` quantile
bins, right-closed: ``(-inf, e1], (e1, e2], ..., (ek, inf)``, with duplicate
edges dropped so a binary or mostly-constant feature gets as many bins as it
has distinct levels. Missing values form their own bin. With ``e_i`` and
``a_i`` the training and recent shares of bin i (each floored at
``SHARE_FLOOR`` so an empty bin does not make the index infinite):

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

Bands (industry convention): below 0.1 stable, 0.1 to 0.25 moderate shift
(investigate), 0.25 and above significant shift (consider retraining).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHARE_FLOOR = 1e-4
DEFAULT_BINS = 10
MODERATE, SIGNIFICANT = 0.1, 0.25


def bin_edges(expected: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior quantile edges of the training values (NaN ignored, duplicates dropped)."""
    values = expected[~np.isnan(expected)]
    if values.size == 0:
        return np.array([])
    quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(quantiles)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per right-closed bin, plus a last bin for NaN."""
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=edges.size + 1).astype(float)
    return np.append(counts, missing.sum())


def psi_from_counts(expected: Sequence[float], actual: Sequence[float],
                    floor: float = SHARE_FLOOR) -> float:
    """PSI of two histograms over the same bins (counts or shares)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs at least one value on each side")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """PSI of ``actual`` against ``expected`` with quantile bins of ``expected``."""
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    edges = bin_edges(expected, bins)
    return psi_from_counts(bin_counts(expected, edges), bin_counts(actual, edges))


def band(value: float) -> str:
    if value >= SIGNIFICANT:
        return "significant shift"
    if value >= MODERATE:
        return "moderate shift"
    return "stable"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    band: str
    training_mean: float
    recent_mean: float


def feature_drift(training: dict[str, np.ndarray], recent: dict[str, np.ndarray],
                  features: Sequence[str], bins: int = DEFAULT_BINS) -> list[FeatureDrift]:
    """PSI per feature, in the order given."""
    results = []
    for name in features:
        value = psi(training[name], recent[name], bins)
        results.append(FeatureDrift(
            name, round(value, 6), band(value),
            float(np.nanmean(training[name])) if training[name].size else float("nan"),
            float(np.nanmean(recent[name])) if recent[name].size else float("nan"),
        ))
    return results
