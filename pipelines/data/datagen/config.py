"""The generator's knobs, validated once so every stage can trust them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Average legitimate transactions per customer per day when ``customers`` is
# not given; sizes the population to the requested volume.
DEFAULT_TX_PER_CUSTOMER_DAY = 2.0
# Customers per terminal when ``terminals`` is not given.
DEFAULT_CUSTOMERS_PER_TERMINAL = 2.0
MIN_CUSTOMERS = 50
MIN_TERMINALS = 40
MAX_MALFORMED_RATE = 0.5


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. ``customers``/``terminals`` of ``None`` scale with volume.

    ``fraud_rate_scale`` multiplies every fraud scenario's budget (1.0 gives an
    overall fraud rate of roughly 0.9 %).
    """

    transactions: int = 500_000
    days: int = 60
    customers: int | None = None
    terminals: int | None = None
    seed: int = 42
    start_date: dt.date = field(default_factory=lambda: dt.date(2026, 1, 1))
    fraud_rate_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.transactions < 1:
            raise ValueError(f"transactions must be at least 1, got {self.transactions}")
        if self.days < 1:
            raise ValueError(f"days must be at least 1, got {self.days}")
        if self.customers is not None and self.customers < 1:
            raise ValueError(f"customers must be at least 1, got {self.customers}")
        if self.terminals is not None and self.terminals < MIN_TERMINALS:
            # Fewer leaves no room for stores, ATMs, web shops and bank branches.
            raise ValueError(f"terminals must be at least {MIN_TERMINALS}, got {self.terminals}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not 0.0 <= self.fraud_rate_scale <= 20.0:
            raise ValueError(f"fraud_rate_scale must be in [0, 20], got {self.fraud_rate_scale}")

    @property
    def n_customers(self) -> int:
        if self.customers is not None:
            return self.customers
        per_customer = self.days * DEFAULT_TX_PER_CUSTOMER_DAY
        return max(MIN_CUSTOMERS, round(self.transactions / per_customer))

    @property
    def n_terminals(self) -> int:
        if self.terminals is not None:
            return self.terminals
        return max(MIN_TERMINALS, round(self.n_customers / DEFAULT_CUSTOMERS_PER_TERMINAL))

    @property
    def start_epoch(self) -> int:
        """Seconds since the Unix epoch at midnight UTC of ``start_date``."""
        midnight = dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.UTC)
        return int(midnight.timestamp())

    @property
    def end_epoch(self) -> int:
        """Exclusive end: midnight UTC after the last day."""
        return self.start_epoch + self.days * 86_400
