"""Anti-money-laundering patterns for the compliance reports (not card fraud).

* ``aml_ctr``: cash over $10,000 at a bank branch; a Currency Transaction
  Report is due for each.
* ``aml_structuring``: one customer splits cash into several withdrawals or
  deposits between $9,000 and $9,999 within a few days, to stay under the CTR
  threshold; a Suspicious Activity Report candidate.

The card holder moves their own money, so ``is_fraud`` stays 0; the
``fraud_scenario`` value only documents what was planted.
"""

from __future__ import annotations

import numpy as np

from pipelines.data.datagen.batch import SECONDS_PER_DAY, Batch
from pipelines.data.datagen.catalog import AML_CTR, AML_STRUCTURING, CTR_THRESHOLD_USD
from pipelines.data.datagen.config import GeneratorConfig
from pipelines.data.datagen.population import Customers, Terminals

CTR_PER_TRANSACTION = 2e-5  # ~10 reportable cash transactions per 500,000
STRUCTURERS_PER_TRANSACTION = 1e-5  # ~5 structuring customers per 500,000
STRUCTURING_FLOOR_USD = 9_000.0
STRUCTURING_WINDOW_DAYS = 4


def _branches(terminals: Terminals) -> np.ndarray:
    return np.flatnonzero(terminals.domestic & (terminals.mcc == "6010"))


def _business_hours(rng: np.random.Generator, count: int) -> np.ndarray:
    """Seconds into the day between 09:00 and 17:00 (branches are open)."""
    return rng.integers(9 * 3600, 17 * 3600, count)


def large_cash(
    config: GeneratorConfig, customers: Customers, terminals: Terminals, rng: np.random.Generator
) -> Batch:
    """A few cash transactions above the CTR threshold."""
    count = max(3, round(config.transactions * CTR_PER_TRANSACTION))
    customer = rng.choice(customers.size, size=count)
    day = rng.integers(0, config.days, count)
    ts = config.start_epoch + day * SECONDS_PER_DAY + _business_hours(rng, count)
    # Whole hundreds strictly above the threshold.
    amount = np.floor(rng.uniform(CTR_THRESHOLD_USD + 100, 30_000.0, count) / 100) * 100
    terminal = rng.choice(_branches(terminals), size=count)
    return Batch.of(customer, terminal, ts, amount, AML_CTR, 0)


def structuring(
    config: GeneratorConfig, customers: Customers, terminals: Terminals, rng: np.random.Generator
) -> Batch:
    """Customers each making 3-6 cash transactions just under $10,000 within 4 days."""
    count = min(customers.size, max(2, round(config.transactions * STRUCTURERS_PER_TRANSACTION)))
    structurers = rng.choice(customers.size, size=count, replace=False)
    lengths = rng.integers(3, 7, count)
    customer = np.repeat(structurers, lengths)
    window = min(STRUCTURING_WINDOW_DAYS, config.days)
    first_day = rng.integers(0, config.days - window + 1, count)
    day = np.repeat(first_day, lengths) + rng.integers(0, window, customer.size)
    ts = config.start_epoch + day * SECONDS_PER_DAY + _business_hours(rng, customer.size)
    amount = np.round(rng.uniform(STRUCTURING_FLOOR_USD, CTR_THRESHOLD_USD - 10, customer.size), -1)
    # Different branches, so no single teller sees the whole pattern.
    terminal = rng.choice(_branches(terminals), size=customer.size)
    return Batch.of(customer, terminal, ts, amount, AML_STRUCTURING, 0)
