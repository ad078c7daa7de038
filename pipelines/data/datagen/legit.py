"""Legitimate spending: habits, rhythms, favourite shops, trips and big purchases.

The legitimate side deliberately overlaps the fraud signals (foreign
transactions while travelling, occasional big purchases, small digital
purchases, online shopping at foreign sites) so a model has to weigh
evidence rather than read one flag.
"""

from __future__ import annotations

import numpy as np

from pipelines.data.datagen.batch import Batch, draw_timestamps
from pipelines.data.datagen.catalog import (
    BIG_TICKET_MCCS,
    KIND_ATM,
    KIND_ONLINE,
    KIND_STORE,
    LEGIT,
    TRAVEL_COUNTRIES,
)
from pipelines.data.datagen.config import GeneratorConfig
from pipelines.data.datagen.population import CATEGORIES, Customers, Terminals

# Share of purchases at big-ticket merchants that are far above habit.
BIG_PURCHASE_PROBABILITY = 0.03
# Typical ATM withdrawals (USD) before scaling by the customer's means.
ATM_NOTES = np.array([20, 40, 60, 80, 100, 120, 160, 200, 300, 400])
ATM_NOTE_WEIGHTS = np.array([4, 8, 10, 9, 14, 6, 5, 8, 3, 2], dtype=float)

_AMOUNT_FACTOR = np.array([c.amount_factor for c in CATEGORIES])
_AMOUNT_SIGMA = np.array([c.amount_sigma for c in CATEGORIES])


def generate_legit(
    config: GeneratorConfig,
    customers: Customers,
    terminals: Terminals,
    count: int,
    rng: np.random.Generator,
) -> Batch:
    """``count`` legitimate transactions spread over customers by their activity."""
    customer = rng.choice(
        customers.size, size=count, p=customers.activity / customers.activity.sum()
    )
    ts = draw_timestamps(rng, config, count)
    terminal = _choose_terminals(customers, terminals, customer, rng)
    terminal = _apply_travel(customers, terminals, customer, terminal, ts, rng)
    amount = legit_amounts(customers, terminals, customer, terminal, rng)
    return Batch.of(customer, terminal, ts, amount, LEGIT, 0)


def _choose_terminals(
    customers: Customers, terminals: Terminals, customer: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Channel by the customer's habits, then a favourite nearby store/ATM or a web shop."""
    u = rng.random(customer.size)
    is_atm = u < customers.p_atm[customer]
    is_online = ~is_atm & (u < customers.p_atm[customer] + customers.p_online[customer])
    is_store = ~(is_atm | is_online)

    terminal = np.empty(customer.size, dtype=np.int64)
    terminal[is_store] = _favourite(customers.near_stores, customer[is_store], rng)
    terminal[is_atm] = _favourite(customers.near_atms, customer[is_atm], rng)
    online = terminals.indices(KIND_ONLINE)
    weights = terminals.popularity[online]
    terminal[is_online] = rng.choice(online, size=int(is_online.sum()), p=weights / weights.sum())
    return terminal


def _favourite(near: np.ndarray, customer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pick among the customer's nearby terminals, the nearest ones most often."""
    ranks = np.arange(near.shape[1])
    weights = 1.0 / (ranks + 1.0) ** 0.9
    rank = rng.choice(ranks, size=customer.size, p=weights / weights.sum())
    return near[customer, rank]


def _apply_travel(
    customers: Customers,
    terminals: Terminals,
    customer: np.ndarray,
    terminal: np.ndarray,
    ts: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """During a trip, in-person spending moves to stores and ATMs of the visited country."""
    country_index = customers.travel_country[customer]
    away = (
        (country_index >= 0)
        & (ts >= customers.travel_start[customer])
        & (ts < customers.travel_end[customer])
        & (terminals.kind[terminal] != KIND_ONLINE)
    )
    physical = terminals.kind != KIND_ONLINE
    for index, country in enumerate(TRAVEL_COUNTRIES):
        rows = np.flatnonzero(away & (country_index == index))
        pool = np.flatnonzero(physical & (terminals.country == country))
        if rows.size and pool.size:
            terminal[rows] = rng.choice(pool, size=rows.size)
    return terminal


def legit_amounts(
    customers: Customers,
    terminals: Terminals,
    customer: np.ndarray,
    terminal: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """USD amounts: the customer's habit scaled by the merchant category, with noise."""
    category = terminals.category[terminal]
    amount = (
        customers.mean_amount[customer]
        * _AMOUNT_FACTOR[category]
        * rng.lognormal(0.0, _AMOUNT_SIGMA[category])
    )
    big_ticket = np.isin(terminals.mcc, list(BIG_TICKET_MCCS))[terminal]
    splurge = big_ticket & (rng.random(customer.size) < BIG_PURCHASE_PROBABILITY)
    amount[splurge] *= rng.uniform(3.0, 12.0, int(splurge.sum()))

    atm = terminals.kind[terminal] == KIND_ATM
    amount[atm] = atm_withdrawals(customers.mean_amount[customer[atm]], rng)
    branch = ((terminals.kind == KIND_STORE) & (terminals.mcc == "6010"))[terminal]
    amount[branch] = np.round(amount[branch], -1) + 10.0  # tellers pay round sums
    return np.maximum(amount, 0.5)


def atm_withdrawals(mean_amount: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round withdrawals in multiples of $20, larger for bigger spenders."""
    notes = rng.choice(
        ATM_NOTES, size=mean_amount.size, p=ATM_NOTE_WEIGHTS / ATM_NOTE_WEIGHTS.sum()
    )
    scale = np.clip(mean_amount / 38.0, 0.5, 3.0)
    return np.maximum(20.0, np.round(notes * scale / 20.0) * 20.0)
