"""Who transacts where: customers (cards, home, habits) and terminals (kind, MCC, place).

Everything is a numpy array indexed by customer or terminal number, so the
transaction stages can gather attributes for a million rows in one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.datagen.cards import generate_card_numbers
from pipelines.data.datagen.catalog import (
    ATM_CATEGORY,
    FOREIGN_ONLINE_SHARE,
    FOREIGN_STORE_SHARE,
    HOME_COUNTRY,
    KIND_ATM,
    KIND_ONLINE,
    KIND_SHARES,
    KIND_STORE,
    ONLINE_CATEGORIES,
    ONLINE_FOREIGN_COUNTRIES,
    STORE_CATEGORIES,
    TRAVEL_COUNTRIES,
    Category,
)
from pipelines.data.datagen.config import GeneratorConfig

GRID_SIZE = 100.0  # the home country is a 100 x 100 square
NEAR_STORES = 25  # how many nearby stores a customer frequents
NEAR_ATMS = 4
MIN_BRANCHES = 3  # bank branches (MCC 6010) the AML patterns need
TRAVELLER_SHARE = 0.05  # customers who spend a few days abroad during the period
CATEGORIES: tuple[Category, ...] = STORE_CATEGORIES + (ATM_CATEGORY,) + ONLINE_CATEGORIES


@dataclass(frozen=True)
class Customers:
    """One row per customer (who holds exactly one card)."""

    card_number: np.ndarray  # str, 16 digits, Luhn-valid
    x: np.ndarray
    y: np.ndarray
    mean_amount: np.ndarray  # typical spend in USD
    activity: np.ndarray  # relative transactions per day
    p_online: np.ndarray  # share of e-commerce transactions
    p_atm: np.ndarray  # share of ATM withdrawals
    near_stores: np.ndarray  # (n, NEAR_STORES) terminal indices, nearest first
    near_atms: np.ndarray  # (n, NEAR_ATMS)
    travel_country: np.ndarray  # index into TRAVEL_COUNTRIES, -1 when not travelling
    travel_start: np.ndarray  # epoch seconds
    travel_end: np.ndarray

    @property
    def size(self) -> int:
        return int(self.mean_amount.size)


@dataclass(frozen=True)
class Terminals:
    """One row per terminal or online merchant."""

    kind: np.ndarray  # KIND_STORE / KIND_ATM / KIND_ONLINE
    category: np.ndarray  # index into CATEGORIES
    country: np.ndarray  # ISO 3166 alpha-2 strings
    x: np.ndarray
    y: np.ndarray
    popularity: np.ndarray  # relative draw among online merchants

    @property
    def size(self) -> int:
        return int(self.kind.size)

    @property
    def mcc(self) -> np.ndarray:
        return np.array([c.mcc for c in CATEGORIES])[self.category]

    @property
    def domestic(self) -> np.ndarray:
        return self.country == HOME_COUNTRY

    def indices(self, kind: int, domestic: bool | None = None) -> np.ndarray:
        """Terminal numbers of one kind, optionally only (non-)domestic ones."""
        mask = self.kind == kind
        if domestic is not None:
            mask &= self.domestic == domestic
        return np.flatnonzero(mask)

    def with_mcc(self, mccs: frozenset[str] | set[str], kind: int | None = None) -> np.ndarray:
        mask = np.isin(self.mcc, list(mccs))
        if kind is not None:
            mask &= self.kind == kind
        return np.flatnonzero(mask)


def build_terminals(config: GeneratorConfig, rng: np.random.Generator) -> Terminals:
    """Stores, ATMs and online merchants; a few abroad; at least a few bank branches."""
    n = config.n_terminals
    n_atm = max(3, round(n * KIND_SHARES[KIND_ATM]))
    n_online = max(5, round(n * KIND_SHARES[KIND_ONLINE]))
    n_store = n - n_atm - n_online
    kind = np.concatenate(
        [np.full(n_store, KIND_STORE), np.full(n_atm, KIND_ATM), np.full(n_online, KIND_ONLINE)]
    )
    category = np.empty(n, dtype=np.int64)
    category[kind == KIND_STORE] = _draw_categories(rng, STORE_CATEGORIES, n_store)
    category[kind == KIND_ATM] = len(STORE_CATEGORIES)
    online_offset = len(STORE_CATEGORIES) + 1
    category[kind == KIND_ONLINE] = online_offset + _draw_categories(
        rng, ONLINE_CATEGORIES, n_online
    )

    country = np.full(n, HOME_COUNTRY, dtype=object)
    physical = np.flatnonzero(kind != KIND_ONLINE)
    abroad = physical[rng.random(physical.size) < FOREIGN_STORE_SHARE]
    country[abroad] = rng.choice(TRAVEL_COUNTRIES, size=abroad.size)
    online = np.flatnonzero(kind == KIND_ONLINE)
    online_abroad = online[rng.random(online.size) < FOREIGN_ONLINE_SHARE]
    country[online_abroad] = rng.choice(ONLINE_FOREIGN_COUNTRIES, size=online_abroad.size)
    # The first store and the first ATM stay at home so every customer has
    # something nearby, however small the population.
    country[[0, n_store]] = HOME_COUNTRY
    country = country.astype(str)
    _ensure_branches(category, kind, country)

    # Places on the home grid; only domestic terminals count as "near home".
    x = rng.uniform(0, GRID_SIZE, n)
    y = rng.uniform(0, GRID_SIZE, n)
    # Heavy-tailed popularity: a few big web shops take most online sales;
    # foreign shops are less popular with domestic customers.
    popularity = rng.pareto(1.5, n) + 0.1
    popularity[country != HOME_COUNTRY] *= 0.5
    return Terminals(kind, category, country, x, y, popularity)


def build_customers(
    config: GeneratorConfig, terminals: Terminals, rng: np.random.Generator
) -> Customers:
    """Customers with a card, a home, spending habits and the terminals near home."""
    n = config.n_customers
    x = rng.uniform(0, GRID_SIZE, n)
    y = rng.uniform(0, GRID_SIZE, n)
    mean_amount = rng.lognormal(np.log(38.0), 0.55, n)
    activity = rng.lognormal(0.0, 0.6, n)
    p_online = rng.beta(2.0, 6.0, n)
    # Most customers rarely use ATMs; some never do.
    p_atm = rng.beta(1.0, 18.0, n) * (rng.random(n) < 0.8)
    near_stores = _nearest(
        x, y, terminals, terminals.indices(KIND_STORE, domestic=True), NEAR_STORES
    )
    near_atms = _nearest(x, y, terminals, terminals.indices(KIND_ATM, domestic=True), NEAR_ATMS)

    travel_country = np.where(
        rng.random(n) < TRAVELLER_SHARE, rng.integers(0, len(TRAVEL_COUNTRIES), n), -1
    )
    trip_days = rng.integers(3, 11, n)
    first_day = rng.integers(0, max(1, config.days - 2), n)
    travel_start = config.start_epoch + first_day * 86_400 + rng.integers(0, 86_400, n)
    travel_end = travel_start + trip_days * 86_400
    return Customers(
        card_number=generate_card_numbers(rng, n),
        x=x,
        y=y,
        mean_amount=mean_amount,
        activity=activity,
        p_online=p_online,
        p_atm=p_atm,
        near_stores=near_stores,
        near_atms=near_atms,
        travel_country=travel_country,
        travel_start=travel_start,
        travel_end=travel_end,
    )


def _draw_categories(
    rng: np.random.Generator, categories: tuple[Category, ...], count: int
) -> np.ndarray:
    weights = np.array([c.weight for c in categories])
    return rng.choice(len(categories), size=count, p=weights / weights.sum())


def _ensure_branches(category: np.ndarray, kind: np.ndarray, country: np.ndarray) -> None:
    """Turn the first domestic stores into bank branches if too few were drawn."""
    branch = next(i for i, c in enumerate(STORE_CATEGORIES) if c.mcc == "6010")
    domestic_stores = np.flatnonzero((kind == KIND_STORE) & (country == HOME_COUNTRY))
    missing = MIN_BRANCHES - int(np.sum(category[domestic_stores] == branch))
    if missing > 0:
        candidates = domestic_stores[category[domestic_stores] != branch]
        category[candidates[:missing]] = branch


def _nearest(
    x: np.ndarray, y: np.ndarray, terminals: Terminals, pool: np.ndarray, k: int
) -> np.ndarray:
    """For each customer, the ``k`` terminals of ``pool`` closest to home, nearest first.

    Brute force in chunks: tens of thousands of customers against a few
    thousand terminals is cheap and needs no spatial index.
    """
    k = min(k, pool.size)
    tx, ty = terminals.x[pool], terminals.y[pool]
    result = np.empty((x.size, k), dtype=np.int64)
    chunk = 2048
    for start in range(0, x.size, chunk):
        stop = min(start + chunk, x.size)
        dist = (x[start:stop, None] - tx[None, :]) ** 2 + (y[start:stop, None] - ty[None, :]) ** 2
        part = (
            np.argpartition(dist, k - 1, axis=1)[:, :k]
            if k < pool.size
            else (np.broadcast_to(np.arange(pool.size), (stop - start, pool.size)))
        )
        order = np.take_along_axis(dist, part, axis=1).argsort(axis=1, kind="stable")
        result[start:stop] = pool[np.take_along_axis(part, order, axis=1)]
    return result
