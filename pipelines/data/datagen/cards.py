"""Card numbers: 16 digits, realistic issuer prefixes, valid Luhn check digit."""

from __future__ import annotations

import numpy as np

from pipelines.compliance import carddata
from pipelines.data.datagen.catalog import BIN_PREFIXES, BIN_WEIGHTS

CARD_LENGTH = 16
_ACCOUNT_DIGITS = CARD_LENGTH - 6 - 1  # after the 6-digit BIN, before the check digit


def luhn_valid(number: str) -> bool:
    """True when ``number`` is all digits and passes the Luhn (mod 10) check."""
    return number.isdigit() and carddata.luhn_valid(number)


def luhn_check_digits(payload: np.ndarray) -> np.ndarray:
    """Check digit for each row of ``payload`` (digits, shape ``(n, length)``).

    The rightmost payload digit is doubled, because the check digit will sit
    to its right; doubled digits above 9 lose 9 (the sum of their digits).
    """
    length = payload.shape[1]
    doubled = (length - 1 - np.arange(length)) % 2 == 0
    digits = payload.astype(np.int64)
    digits[:, doubled] *= 2
    digits[digits > 9] -= 9
    return (10 - digits.sum(axis=1) % 10) % 10


def generate_card_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct Luhn-valid 16-digit card numbers (numpy array of str)."""
    bins = np.array([[int(c) for c in prefix] for prefix in BIN_PREFIXES], dtype=np.int64)
    weights = np.asarray(BIN_WEIGHTS) / np.sum(BIN_WEIGHTS)
    issuer = rng.choice(len(BIN_PREFIXES), size=count, p=weights)
    accounts = _distinct_accounts(rng, issuer)
    account_digits = (accounts[:, None] // 10 ** np.arange(_ACCOUNT_DIGITS - 1, -1, -1)) % 10
    payload = np.hstack([bins[issuer], account_digits])
    digits = np.hstack([payload, luhn_check_digits(payload)[:, None]])
    as_bytes = (digits.astype(np.uint8) + ord("0")).view(f"S{CARD_LENGTH}").ravel()
    return as_bytes.astype(str)


def _distinct_accounts(rng: np.random.Generator, issuer: np.ndarray) -> np.ndarray:
    """Random account numbers, redrawn until no two cards of one issuer collide."""
    space = 10**_ACCOUNT_DIGITS
    accounts = rng.integers(0, space, size=issuer.size, dtype=np.int64)
    while True:
        keys = issuer * space + accounts
        _, first = np.unique(keys, return_index=True)
        clashes = np.setdiff1d(np.arange(keys.size), first)
        if clashes.size == 0:
            return accounts
        accounts[clashes] = rng.integers(0, space, size=clashes.size, dtype=np.int64)
