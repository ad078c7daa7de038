"""``generate_transactions``: the whole synthetic world as one Arrow table.

Each stage draws from its own random stream derived from the seed, so the
output is identical for a seed and tuning one stage does not reshuffle the
others.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.schema import DEFAULT_CURRENCY, LANDING_COLUMNS
from pipelines.data.datagen import aml, fraud
from pipelines.data.datagen.batch import SECONDS_PER_DAY, Batch
from pipelines.data.datagen.catalog import (
    CASH_MCCS,
    COUNTRY_CURRENCY,
    KIND_CHANNEL,
    LEGIT,
    LOCAL_CURRENCY_PROBABILITY,
    SCENARIOS,
    USD_RATE,
)
from pipelines.data.datagen.config import GeneratorConfig
from pipelines.data.datagen.legit import generate_legit
from pipelines.data.datagen.population import Customers, Terminals, build_customers, build_terminals

# Stage numbers for the per-stage random streams; append, never renumber.
_STAGES = (
    "terminals",
    "customers",
    "account_takeover",
    "card_testing",
    "aml",
    "legit",
    "compromised_terminal",
    "large_amount",
    "currency",
)

# Injected scenarios must leave most of the volume to legitimate spending.
MAX_INJECTED_SHARE = 0.5


def _rng(config: GeneratorConfig, stage: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, _STAGES.index(stage)]))


def generate_transactions(config: GeneratorConfig) -> pa.Table:
    """Exactly ``config.transactions`` rows with the columns of ``LANDING_COLUMNS``.

    Types: ``timestamp`` is ``timestamp[s, UTC]``, ``amount`` float64 (in
    ``currency``), ``is_cash`` bool, ``is_fraud`` int8, ``fraud_scenario``
    null for ordinary transactions. Rows are sorted by time.
    """
    terminals = build_terminals(config, _rng(config, "terminals"))
    customers = build_customers(config, terminals, _rng(config, "customers"))
    budget = fraud.FraudBudget()
    aml_rng = _rng(config, "aml")
    injected = Batch.concat(
        [
            fraud.account_takeover(
                config, customers, terminals, budget, _rng(config, "account_takeover")
            ),
            fraud.card_testing(config, customers, terminals, budget, _rng(config, "card_testing")),
            aml.large_cash(config, customers, terminals, aml_rng),
            aml.structuring(config, customers, terminals, aml_rng),
        ]
    )
    if injected.size > MAX_INJECTED_SHARE * config.transactions:
        raise ValueError(
            f"{config.transactions} transactions are too few for the fraud and AML patterns "
            f"({injected.size} rows); generate at least {2 * injected.size} transactions"
        )
    legit = generate_legit(
        config, customers, terminals, config.transactions - injected.size, _rng(config, "legit")
    )
    fraud.mark_compromised_terminals(
        config, terminals, legit, budget, _rng(config, "compromised_terminal")
    )
    fraud.mark_large_amounts(
        config, customers, terminals, legit, budget, _rng(config, "large_amount")
    )
    batch = Batch.concat([legit, injected])
    return _to_table(config, customers, terminals, batch, _rng(config, "currency"))


def _to_table(
    config: GeneratorConfig,
    customers: Customers,
    terminals: Terminals,
    batch: Batch,
    rng: np.random.Generator,
) -> pa.Table:
    """Sort by time, settle currencies and materialise the string columns."""
    order = np.argsort(batch.ts, kind="stable")
    customer, terminal, ts = batch.customer[order], batch.terminal[order], batch.ts[order]
    currency, amount = _currencies(terminals, terminal, batch.amount[order], rng)

    timestamps = pa.array(ts, type=pa.timestamp("s", tz="UTC"))
    mcc = terminals.mcc
    columns = {
        "transaction_id": _transaction_ids(config, ts),
        "timestamp": timestamps,
        "customer_id": _ids("C", customers.size, 7).take(customer),
        "terminal_id": _ids("T", terminals.size, 6).take(terminal),
        "amount": pa.array(amount, type=pa.float64()),
        "card_number": pa.array(customers.card_number).take(customer),
        "currency": currency,
        "merchant_category": pa.array(mcc).take(terminal),
        "channel": pa.array(np.array(KIND_CHANNEL)[terminals.kind]).take(terminal),
        "country": pa.array(terminals.country).take(terminal),
        "is_cash": pa.array(np.isin(mcc, list(CASH_MCCS))).take(terminal),
        "is_fraud": pa.array(batch.is_fraud[order], type=pa.int8()),
        "fraud_scenario": pa.array(
            [None if s == LEGIT else s for s in SCENARIOS], pa.string()
        ).take(batch.scenario[order]),
    }
    return pa.table([columns[name] for name in LANDING_COLUMNS], names=list(LANDING_COLUMNS))


def _ids(prefix: str, count: int, width: int) -> pa.Array:
    """``prefix`` followed by the zero-padded index: C0000042, T000007."""
    numbers = pc.cast(pa.array(np.arange(count)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(numbers, width, "0"), "")


def _transaction_ids(config: GeneratorConfig, ts: np.ndarray) -> pa.Array:
    """``TXyyyymmdd-nnnnnnn``: the day plus the row's sequence within that day."""
    day = (ts - config.start_epoch) // SECONDS_PER_DAY
    first_of_day = np.searchsorted(day, np.arange(config.days))
    sequence = np.arange(ts.size) - first_of_day[day]
    day_prefix = [
        f"TX{config.start_date + dt.timedelta(days=int(d)):%Y%m%d}-" for d in range(config.days)
    ]
    prefix = pa.array(day_prefix).take(day)
    digits = pc.utf8_lpad(pc.cast(pa.array(sequence), pa.string()), 7, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _currencies(
    terminals: Terminals, terminal: np.ndarray, amount_usd: np.ndarray, rng: np.random.Generator
) -> tuple[pa.Array, np.ndarray]:
    """Foreign terminals mostly charge in local currency; amounts are converted to it."""
    codes = np.array([DEFAULT_CURRENCY, *sorted(set(COUNTRY_CURRENCY.values()))])
    local = np.array([COUNTRY_CURRENCY.get(c, DEFAULT_CURRENCY) for c in terminals.country])
    local_code = np.searchsorted(codes[1:], local) + 1
    local_code[local == DEFAULT_CURRENCY] = 0
    charged_local = rng.random(terminal.size) < LOCAL_CURRENCY_PROBABILITY
    code = np.where(charged_local, local_code[terminal], 0)
    rate = np.array([USD_RATE[c] for c in codes])[code]
    amount = np.maximum(np.round(amount_usd * rate, 2), 0.01)
    return pa.array(codes).take(code), amount
