"""Fraud scenarios, each a known pattern from card-fraud practice.

* ``account_takeover``: a stolen card or account is used online (often at
  foreign, high-risk merchants) or at ATMs far from home, at a higher pace
  and for larger amounts than the holder's habit.
* ``card_testing``: a burst of tiny online charges within minutes to check
  a card works, sometimes followed by a cash-out.
* ``compromised_terminal``: a skimmed terminal; most transactions there during
  a few weeks turn out fraudulent (some do not, as in real chargeback data).
* ``large_amount``: a single purchase far above the customer's habit.

Each scenario overlaps legitimate behaviour (trips abroad, big purchases,
small digital purchases) so no single field separates fraud from legitimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.datagen.batch import SECONDS_PER_DAY, Batch, clip_to_period, draw_timestamps
from pipelines.data.datagen.catalog import (
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    CARD_TESTING_MCCS,
    CASH_MCCS,
    COMPROMISED_TERMINAL,
    FRAUD_HOURLY_WEIGHTS,
    FRAUD_PRONE_MCCS,
    KIND_ATM,
    KIND_ONLINE,
    KIND_STORE,
    LARGE_AMOUNT,
    LEGIT,
    SCENARIO_CODE,
)
from pipelines.data.datagen.config import GeneratorConfig
from pipelines.data.datagen.legit import atm_withdrawals
from pipelines.data.datagen.population import CATEGORIES, Customers, Terminals


@dataclass(frozen=True)
class FraudBudget:
    """Target share of all transactions per scenario (about 0.9 % in total)."""

    compromised_terminal: float = 0.0032
    account_takeover: float = 0.0028
    card_testing: float = 0.0016
    large_amount: float = 0.0010

    def rows(self, scenario_share: float, config: GeneratorConfig) -> int:
        return round(scenario_share * config.fraud_rate_scale * config.transactions)


ATO_MEAN_ROWS = 6.0  # 2 + Poisson(4) transactions per taken-over card
ATO_MEAN_GAP_SECONDS = 1.5 * 3600
CARD_TEST_MEAN_ROWS = 12.0  # 5 + Poisson(7) probes per burst
CARD_TEST_MEAN_GAP_SECONDS = 35.0
CASH_OUT_PROBABILITY = 0.35
COMPROMISE_PROBABILITY = 0.85  # share of a skimmed terminal's window that is fraud
_AMOUNT_FACTOR = np.array([c.amount_factor for c in CATEGORIES])


def _victims(
    rows: int, mean_rows: float, customers: Customers, rng: np.random.Generator
) -> np.ndarray:
    """Distinct customers to victimise, enough for about ``rows`` rows."""
    if rows <= 0:
        return np.empty(0, dtype=np.int64)
    count = min(customers.size, max(1, round(rows / mean_rows)))
    return rng.choice(customers.size, size=count, replace=False)


def _sequences(
    rng: np.random.Generator,
    config: GeneratorConfig,
    victims: np.ndarray,
    lengths: np.ndarray,
    mean_gap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-victim event sequences: (victim of each row, timestamp of each row)."""
    if victims.size == 0:
        return victims, np.empty(0, dtype=np.int64)
    # Start at least a day in (when the period allows) so histories exist.
    day_p = np.ones(config.days)
    if config.days > 2:
        day_p[0] = 0.0
    starts = draw_timestamps(rng, config, victims.size, FRAUD_HOURLY_WEIGHTS, day_p / day_p.sum())
    owner = np.repeat(np.arange(victims.size), lengths)
    gaps = rng.exponential(mean_gap, owner.size)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[first[lengths > 0]] = 0.0
    # Cumulative gaps restarted at each victim's first row.
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[first], lengths)
    ts = clip_to_period(starts[owner] + offsets.astype(np.int64), config)
    return victims[owner], ts


def _risky_online_merchant(
    terminals: Terminals, count: int, rng: np.random.Generator, mccs: frozenset[str]
) -> np.ndarray:
    """Online merchants, tilted to the categories and countries fraudsters favour."""
    online = terminals.indices(KIND_ONLINE)
    weights = terminals.popularity[online].copy()
    weights[np.isin(terminals.mcc[online], list(mccs))] *= 4.0
    weights[~terminals.domestic[online]] *= 3.0
    return rng.choice(online, size=count, p=weights / weights.sum())


def account_takeover(
    config: GeneratorConfig,
    customers: Customers,
    terminals: Terminals,
    budget: FraudBudget,
    rng: np.random.Generator,
) -> Batch:
    """Stolen cards: a quick series of online purchases and ATM cash-outs."""
    victims = _victims(budget.rows(budget.account_takeover, config), ATO_MEAN_ROWS, customers, rng)
    lengths = 2 + rng.poisson(4.0, victims.size)
    customer, ts = _sequences(rng, config, victims, lengths, ATO_MEAN_GAP_SECONDS)
    atm = rng.random(customer.size) < 0.2
    terminal = _risky_online_merchant(terminals, customer.size, rng, FRAUD_PRONE_MCCS)
    terminal[atm] = rng.choice(terminals.indices(KIND_ATM), size=int(atm.sum()))
    amount = _spree_amounts(customers, terminals, customer, terminal, rng)
    return Batch.of(customer, terminal, ts, amount, ACCOUNT_TAKEOVER, 1)


def _spree_amounts(
    customers: Customers,
    terminals: Terminals,
    customer: np.ndarray,
    terminal: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Above the holder's habit, but often within a normal customer's range."""
    amount = (
        customers.mean_amount[customer]
        * np.sqrt(_AMOUNT_FACTOR[terminals.category[terminal]])
        * rng.lognormal(np.log(2.2), 0.8, customer.size)
    )
    atm = terminals.kind[terminal] == KIND_ATM
    amount[atm] = atm_withdrawals(customers.mean_amount[customer[atm]] * 2.5, rng)
    return amount


def card_testing(
    config: GeneratorConfig,
    customers: Customers,
    terminals: Terminals,
    budget: FraudBudget,
    rng: np.random.Generator,
) -> Batch:
    """Bursts of tiny online charges within minutes, some followed by a cash-out."""
    victims = _victims(
        budget.rows(budget.card_testing, config), CARD_TEST_MEAN_ROWS, customers, rng
    )
    lengths = 5 + rng.poisson(7.0, victims.size)
    customer, ts = _sequences(rng, config, victims, lengths, CARD_TEST_MEAN_GAP_SECONDS)
    # Each burst hits one or two merchants that accept small amounts.
    owner = np.repeat(np.arange(victims.size), lengths)
    burst_merchants = _risky_online_merchant(terminals, 2 * victims.size, rng, CARD_TESTING_MCCS)
    second = rng.random(owner.size) < 0.3
    terminal = burst_merchants[2 * owner + second]
    cents = rng.uniform(0.5, 4.99, owner.size)
    whole = rng.random(owner.size) < 0.4
    cents[whole] = rng.choice([1.0, 1.0, 2.0, 5.0], size=int(whole.sum()))
    probes = Batch.of(customer, terminal, ts, cents, CARD_TESTING, 1)

    cash_out = victims[rng.random(victims.size) < CASH_OUT_PROBABILITY]
    if cash_out.size == 0:
        return probes
    burst_end = np.array([ts[customer == v].max() for v in cash_out])
    follow = rng.integers(1, 4, cash_out.size)
    out_customer = np.repeat(cash_out, follow)
    out_ts = np.repeat(burst_end, follow) + rng.integers(600, 2 * SECONDS_PER_DAY, follow.sum())
    out_terminal = _risky_online_merchant(terminals, out_customer.size, rng, FRAUD_PRONE_MCCS)
    out_amount = _spree_amounts(customers, terminals, out_customer, out_terminal, rng)
    cash_outs = Batch.of(
        out_customer, out_terminal, clip_to_period(out_ts, config), out_amount, CARD_TESTING, 1
    )
    return Batch.concat([probes, cash_outs])


def mark_compromised_terminals(
    config: GeneratorConfig,
    terminals: Terminals,
    legit: Batch,
    budget: FraudBudget,
    rng: np.random.Generator,
) -> int:
    """Label most transactions at skimmed stores during 2-4 week windows; returns rows."""
    target = budget.rows(budget.compromised_terminal, config)
    if target <= 0:
        return 0
    order = np.argsort(legit.terminal, kind="stable")
    bounds = np.searchsorted(legit.terminal[order], np.arange(terminals.size + 1))
    candidates = terminals.indices(KIND_STORE)
    candidates = candidates[terminals.mcc[candidates] != "6010"]
    marked = 0
    for terminal in rng.permutation(candidates):
        rows = order[bounds[terminal] : bounds[terminal + 1]]
        start = config.start_epoch + rng.integers(0, max(1, config.days - 7)) * SECONDS_PER_DAY
        length = rng.integers(14, 29) * SECONDS_PER_DAY
        in_window = rows[(legit.ts[rows] >= start) & (legit.ts[rows] < start + length)]
        hit = in_window[rng.random(in_window.size) < COMPROMISE_PROBABILITY]
        hit = hit[legit.scenario[hit] == SCENARIO_CODE[LEGIT]]
        legit.scenario[hit] = SCENARIO_CODE[COMPROMISED_TERMINAL]
        legit.is_fraud[hit] = 1
        marked += hit.size
        if marked >= target:
            break
    return marked


def mark_large_amounts(
    config: GeneratorConfig,
    customers: Customers,
    terminals: Terminals,
    legit: Batch,
    budget: FraudBudget,
    rng: np.random.Generator,
) -> int:
    """Turn some purchases into single large fraudulent ones; returns rows."""
    target = budget.rows(budget.large_amount, config)
    purchase = ~np.isin(terminals.mcc, list(CASH_MCCS))[legit.terminal]
    eligible = np.flatnonzero(purchase & (legit.scenario == SCENARIO_CODE[LEGIT]))
    chosen = rng.choice(eligible, size=min(target, eligible.size), replace=False)
    habit = customers.mean_amount[legit.customer[chosen]]
    legit.amount[chosen] = np.maximum(habit * rng.lognormal(np.log(9.0), 0.5, chosen.size), 200.0)
    legit.scenario[chosen] = SCENARIO_CODE[LARGE_AMOUNT]
    legit.is_fraud[chosen] = 1
    return int(chosen.size)
