"""A batch of transactions as parallel numpy arrays (indices, not strings).

Strings (ids, card numbers, categories) are only materialised once, when the
final Arrow table is built, which keeps every stage vectorised and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.datagen.catalog import HOURLY_WEIGHTS, SCENARIO_CODE, WEEKDAY_WEIGHTS
from pipelines.data.datagen.config import GeneratorConfig

SECONDS_PER_DAY = 86_400


@dataclass
class Batch:
    """Transactions: who, where, when (epoch seconds), how much (USD), which scenario."""

    customer: np.ndarray
    terminal: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    scenario: np.ndarray  # int8 code, see catalog.SCENARIO_CODE
    is_fraud: np.ndarray  # int8 0/1

    @classmethod
    def of(
        cls,
        customer: np.ndarray,
        terminal: np.ndarray,
        ts: np.ndarray,
        amount: np.ndarray,
        scenario: str,
        is_fraud: int,
    ) -> Batch:
        """A batch where every row belongs to one scenario."""
        n = customer.size
        return cls(
            customer=customer.astype(np.int64),
            terminal=terminal.astype(np.int64),
            ts=ts.astype(np.int64),
            amount=amount.astype(np.float64),
            scenario=np.full(n, SCENARIO_CODE[scenario], dtype=np.int8),
            is_fraud=np.full(n, is_fraud, dtype=np.int8),
        )

    @property
    def size(self) -> int:
        return int(self.ts.size)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        return Batch(
            **{
                name: np.concatenate([getattr(b, name) for b in batches])
                for name in ("customer", "terminal", "ts", "amount", "scenario", "is_fraud")
            }
        )


def day_weights(config: GeneratorConfig) -> np.ndarray:
    """Probability of each day: the weekly rhythm (weekday of each calendar day)."""
    first_weekday = config.start_date.weekday()
    weekdays = (first_weekday + np.arange(config.days)) % 7
    weights = WEEKDAY_WEIGHTS[weekdays]
    return weights / weights.sum()


def draw_timestamps(
    rng: np.random.Generator,
    config: GeneratorConfig,
    count: int,
    hourly: np.ndarray = HOURLY_WEIGHTS,
    day_p: np.ndarray | None = None,
) -> np.ndarray:
    """Epoch seconds following the weekly and the daily rhythm."""
    days = rng.choice(config.days, size=count, p=day_weights(config) if day_p is None else day_p)
    hours = rng.choice(24, size=count, p=hourly / hourly.sum())
    seconds = rng.integers(0, 3600, size=count)
    return config.start_epoch + days * SECONDS_PER_DAY + hours * 3600 + seconds


def clip_to_period(ts: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Keep event times inside the generated period (sequences may run past its end)."""
    return np.clip(ts, config.start_epoch, config.end_epoch - 1)
