"""The run parameters a model carries from the feature build to the alert: defaults and checks.

Three values decide what a model's scores mean, and every step that uses one
must use the same value:

* **label delay** (days until a fraud label is known). Decided once, by the
  feature build (``fraudops features --label-delay-days N``, default
  :data:`DEFAULT_LABEL_DELAY_DAYS`), which writes it into the feature manifest
  ``_feature_set.json``. Preprocess takes it from the manifest: the pipeline
  parameter ``LabelDelayDays`` defaults to :data:`LABEL_DELAY_FROM_FEATURES`
  ("the manifest's"), and an explicit value that differs is refused.
* **feature set version**: the fingerprint of the feature definitions
  (``pipelines.data.features.definitions.FEATURE_SET_VERSION``, computed there
  from the definitions, so it is never typed by hand), also written into the
  manifest by the feature build.
* **alert threshold**: decided once per pipeline run by the ``AlertThreshold``
  parameter (default :data:`DEFAULT_ALERT_THRESHOLD`); evaluate records it in
  ``evaluation.json``.

Training and evaluation copy the delay and the version into the model;
the Register step copies all three from ``evaluation.json`` into the model
package's ``CustomerMetadataProperties`` (:meth:`ModelParameters.as_metadata`).
Consumers read them from the approved model package, never from a default of
their own. The container scripts (``processing/``, ``training/``,
``inference/``) cannot import this module: they receive the values as
arguments or read them from the artifacts they are handed.

This module sits in ``core`` because the values cross every layer above it:
the data layer builds features with the delay, the fraud layer declares the
pipeline parameters, the serving layer applies the threshold, and the Lambdas
read all three from the deployed model package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A week: card-fraud investigations typically confirm or clear a case within days
# (Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection").
DEFAULT_LABEL_DELAY_DAYS = 7
# training/train.py does not re-weight the fraud class by default, so scores are
# calibrated probabilities and 0.5 means "more likely fraud than not".
DEFAULT_ALERT_THRESHOLD = 0.5
# LabelDelayDays pipeline parameter value meaning "the delay the features were built
# with" (processing/preprocess.py reads the manifest then). A real delay is >= 0.
LABEL_DELAY_FROM_FEATURES = -1
# Stream setting (not a model parameter; here so the CLI, the stream scorer and the
# Lambda share it without importing the online engine): how far behind the stream's
# newest transaction one may arrive and still be scored, its own entities permitting
# (pipelines.serving.online.engine). Covers shards and producers lagging each other by
# minutes; raising it only keeps label and dedupe state that much longer.
DEFAULT_ALLOWED_LATENESS_SECONDS = 3600
# Stream setting, the other side of the same clock: how far (seconds) a transaction's
# time may be ahead of the processing clock and still be scored. A record dated further
# ahead is a producer's wrong clock, not a transaction: accepted, it would move the
# stream's newest time (the watermark) and make every correctly dated record after it
# "late". Five minutes is the customary tolerance for unsynchronised clocks (Kerberos'
# default maximum clock skew); NTP-synchronised producers are within milliseconds. It
# may not exceed the allowed lateness (check_max_future_skew_seconds): then even a
# record accepted at the bound leaves on-time records within the lateness. Not set, it
# is this default capped at the lateness (a lateness of 0 means a skew of 0).
DEFAULT_MAX_FUTURE_SKEW_SECONDS = 300


class ParameterError(ValueError):
    """A run parameter is missing or out of range; the message names where it came from."""


def check_label_delay_days(value: object, source: str = "label_delay_days") -> int:
    """The label delay as whole days >= 0; ``source`` names where ``value`` came from.

    Accepts an int or an integral string (model package metadata is strings).
    """
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{source} must be a whole number of days, got {value!r}")
    if value < 0:
        raise ParameterError(f"{source} must be >= 0, got {value}")
    return value


def check_whole_seconds(value: object, source: str) -> int:
    """A stream bound (allowed lateness, future skew) as whole seconds >= 0 (an int or its
    text, as in an environment variable); ``source`` names where ``value`` came from."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParameterError(f"{source} must be a whole number of seconds >= 0, got {value!r}")
    return value


def check_max_future_skew_seconds(value: object | None, allowed_lateness_seconds: int,
                                  source: str = "max_future_skew_seconds",
                                  lateness_source: str = "allowed_lateness_seconds") -> int:
    """The stream's future skew as whole seconds, at most the allowed lateness; ``None``
    (not set): ``DEFAULT_MAX_FUTURE_SKEW_SECONDS`` capped at the lateness.

    A record accepted ``skew`` ahead of the clock moves the watermark that far, so
    records on time are then ``skew`` behind it: within the lateness only if
    ``skew <= lateness``; otherwise one early clock would still dead-letter them.
    """
    if value is None:
        return min(DEFAULT_MAX_FUTURE_SKEW_SECONDS, allowed_lateness_seconds)
    skew = check_whole_seconds(value, source)
    if skew > allowed_lateness_seconds:
        raise ParameterError(
            f"{source} ({skew} s) must not exceed {lateness_source} "
            f"({allowed_lateness_seconds} s): a record accepted that far ahead of the clock "
            f"would make on-time records later than the allowed lateness; lower {source} "
            f"or raise {lateness_source}"
        )
    return skew


def check_alert_threshold(value: object, source: str = "alert_threshold") -> float:
    """The alert threshold as a float in [0, 1]; ``source`` names where it came from."""
    try:
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ParameterError(f"{source} must be a number in [0, 1], got {value!r}") from None
    if isinstance(value, bool) or math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
        raise ParameterError(f"{source} must be a number in [0, 1], got {value!r}")
    return threshold


def check_feature_set_version(value: object, source: str = "feature_set_version") -> str:
    """A recorded feature set version: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{source} must name a feature set version, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelParameters:
    """What a registered model carries onward: its label delay, features and threshold."""

    label_delay_days: int
    feature_set_version: str
    alert_threshold: float

    def as_metadata(self) -> dict[str, str]:
        """``CustomerMetadataProperties`` entries (SageMaker allows string values only)."""
        return {
            "label_delay_days": str(self.label_delay_days),
            "feature_set_version": self.feature_set_version,
            "alert_threshold": repr(self.alert_threshold),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, where: str) -> ModelParameters:
        """Read and check the three entries of a model package's metadata.

        ``where`` names the package, so an error says which model to fix.
        """
        found = dict(metadata or {})
        missing = [key for key in ("label_delay_days", "feature_set_version", "alert_threshold")
                   if found.get(key) in (None, "")]
        if missing:
            raise ParameterError(
                f"{where} CustomerMetadataProperties lack {missing}: the model was registered "
                "before models carried their run parameters; re-run the pipeline and approve "
                "the new version"
            )
        return cls(
            label_delay_days=check_label_delay_days(
                found["label_delay_days"], f"{where} label_delay_days"),
            feature_set_version=check_feature_set_version(
                found["feature_set_version"], f"{where} feature_set_version"),
            alert_threshold=check_alert_threshold(
                found["alert_threshold"], f"{where} alert_threshold"),
        )
