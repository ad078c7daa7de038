"""Reference tables of the synthetic world: merchant categories, countries, rhythms.

Kept apart from the sampling code so that the realism knobs can be read (and
tuned) in one place. Merchant category codes follow ISO 18245.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- scenario labels ---------------------------------------------------------
# ``fraud_scenario`` values. Rows of a fraud scenario carry ``is_fraud = 1``
# (at a compromised terminal, the ~15 % of window rows that stay legitimate
# keep an empty scenario). AML patterns are *not* card
# fraud: the customer spends their own money, so ``is_fraud`` stays 0 and the
# fraud model never learns from them; compliance reports select them by rule
# (cash > $10,000, structuring just below it), the label only lets tests and
# analysts check that the rules find what was planted.
LEGIT = ""  # written as an empty field (null): no scenario
COMPROMISED_TERMINAL = "compromised_terminal"
ACCOUNT_TAKEOVER = "account_takeover"
CARD_TESTING = "card_testing"
LARGE_AMOUNT = "large_amount"
AML_CTR = "aml_ctr"
AML_STRUCTURING = "aml_structuring"

SCENARIOS: tuple[str, ...] = (
    LEGIT,
    COMPROMISED_TERMINAL,
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    LARGE_AMOUNT,
    AML_CTR,
    AML_STRUCTURING,
)
FRAUD_SCENARIOS: tuple[str, ...] = (
    COMPROMISED_TERMINAL,
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    LARGE_AMOUNT,
)
AML_SCENARIOS: tuple[str, ...] = (AML_CTR, AML_STRUCTURING)
SCENARIO_CODE: dict[str, int] = {name: code for code, name in enumerate(SCENARIOS)}

# Currency Transaction Report threshold (31 CFR 1010.311): cash over $10,000.
CTR_THRESHOLD_USD = 10_000.0

# --- terminal kinds ------------------------------------------------------------
KIND_STORE = 0  # physical point of sale: channel card_present
KIND_ATM = 1  # cash machine: channel atm, cash withdrawal
KIND_ONLINE = 2  # e-commerce merchant: channel ecommerce
KIND_CHANNEL: tuple[str, ...] = ("card_present", "atm", "ecommerce")

# Share of terminals of each kind (stores, ATMs, online merchants).
KIND_SHARES: tuple[float, ...] = (0.78, 0.10, 0.12)


@dataclass(frozen=True)
class Category:
    """One merchant category: how popular it is and how much people spend there."""

    mcc: str
    label: str
    weight: float  # popularity among terminals of its kind
    amount_factor: float  # multiplies the customer's typical amount
    amount_sigma: float  # log-normal spread of amounts in this category


STORE_CATEGORIES: tuple[Category, ...] = (
    Category("5411", "grocery", 0.22, 1.3, 0.55),
    Category("5812", "restaurants", 0.16, 1.0, 0.50),
    Category("5814", "fast food", 0.12, 0.30, 0.45),
    Category("5541", "service stations", 0.10, 1.0, 0.40),
    Category("5912", "drug stores", 0.06, 0.6, 0.55),
    Category("5311", "department stores", 0.06, 1.6, 0.70),
    Category("5999", "miscellaneous retail", 0.10, 0.9, 0.75),
    Category("5732", "electronics", 0.04, 3.5, 0.80),
    Category("4111", "commuter transport", 0.05, 0.35, 0.40),
    Category("7011", "hotels", 0.03, 4.0, 0.60),
    Category("7995", "gambling", 0.02, 1.5, 0.90),
    # Bank branches: cash over the counter (larger than ATM withdrawals).
    Category("6010", "manual cash disbursement", 0.04, 8.0, 0.70),
)
ATM_CATEGORY = Category("6011", "automated cash disbursement", 1.0, 1.0, 0.0)
ONLINE_CATEGORIES: tuple[Category, ...] = (
    Category("5999", "miscellaneous retail", 0.24, 0.9, 0.80),
    Category("5311", "department stores", 0.12, 1.4, 0.70),
    Category("5732", "electronics", 0.12, 3.0, 0.85),
    Category("5816", "digital goods: games", 0.10, 0.35, 0.70),
    Category("5815", "digital goods: media", 0.10, 0.25, 0.60),
    Category("5812", "food delivery", 0.10, 0.8, 0.45),
    Category("4722", "travel agencies", 0.08, 5.0, 0.60),
    Category("4829", "wire transfer / money orders", 0.07, 3.0, 0.90),
    Category("7995", "gambling", 0.07, 1.2, 1.00),
)
CASH_MCCS: frozenset[str] = frozenset({"6010", "6011"})
# Categories where a legitimate customer occasionally spends far above habit.
BIG_TICKET_MCCS: frozenset[str] = frozenset({"5732", "7011", "4722", "5311"})
# What fraudsters buy with a stolen card: resaleable goods and money movement.
FRAUD_PRONE_MCCS: frozenset[str] = frozenset({"5732", "4829", "7995", "5999", "5816"})
# Where card testers try tiny amounts (donations, digital goods, small shops).
CARD_TESTING_MCCS: frozenset[str] = frozenset({"5815", "5816", "5999"})

# --- countries and currencies ----------------------------------------------------
HOME_COUNTRY = "US"
# Countries with physical terminals abroad (travel); local currency.
TRAVEL_COUNTRIES: tuple[str, ...] = ("CA", "MX", "GB", "FR", "DE", "ES", "IT")
# Countries where online merchants sit besides the US.
ONLINE_FOREIGN_COUNTRIES: tuple[str, ...] = ("GB", "IE", "NL", "CN", "NG", "RO", "BR", "CA")
COUNTRY_CURRENCY: dict[str, str] = {
    "CA": "CAD",
    "GB": "GBP",
    "FR": "EUR",
    "DE": "EUR",
    "ES": "EUR",
    "IT": "EUR",
    "IE": "EUR",
    "NL": "EUR",
}
# Units of currency per USD (static: enough to keep amounts plausible).
USD_RATE: dict[str, float] = {"USD": 1.0, "CAD": 1.36, "GBP": 0.79, "EUR": 0.92}
# Share of foreign terminals among stores and ATMs, and among online merchants.
FOREIGN_STORE_SHARE = 0.06
FOREIGN_ONLINE_SHARE = 0.22
# Probability a foreign terminal charges in local currency (else the card's USD,
# e.g. dynamic currency conversion).
LOCAL_CURRENCY_PROBABILITY = 0.75

# --- card issuers: 6-digit bank identification numbers ---------------------------
# Realistic prefixes: Visa 4, Mastercard 51-55 and 2221-2720, Discover 6011/65.
BIN_PREFIXES: tuple[str, ...] = (
    "414720", "426684", "438857", "453201", "476173", "491653",  # Visa
    "517805", "524364", "542418", "552433", "222300", "271041",  # Mastercard
    "601100", "650052",  # Discover
)  # fmt: skip
BIN_WEIGHTS: tuple[float, ...] = (
    0.10, 0.09, 0.08, 0.09, 0.08, 0.06,
    0.08, 0.07, 0.08, 0.06, 0.03, 0.03,
    0.08, 0.07,
)  # fmt: skip

# --- rhythms -------------------------------------------------------------------
# Relative activity per UTC hour (the bank is modelled in one time zone): quiet
# nights, a morning rise, a lunch peak and an evening peak.
HOURLY_WEIGHTS = np.array(
    [
        0.20, 0.12, 0.08, 0.06, 0.07, 0.15,  # 00-05 night
        0.35, 0.65, 0.95, 1.05, 1.10, 1.30,  # 06-11 morning
        1.55, 1.45, 1.15, 1.10, 1.20, 1.45,  # 12-17 lunch, afternoon
        1.60, 1.50, 1.20, 0.90, 0.60, 0.35,  # 18-23 evening
    ]
)  # fmt: skip
# Relative activity per weekday, Monday first: busier Fridays and Saturdays.
WEEKDAY_WEIGHTS = np.array([0.92, 0.94, 0.97, 1.00, 1.12, 1.22, 0.83])
# Card fraud leans to the small hours (fewer eyes, other time zones).
FRAUD_HOURLY_WEIGHTS = np.sqrt(HOURLY_WEIGHTS) + 0.35
