"""Card numbers -> keyed tokens and masked forms; the clear number never leaves here.

``card_token`` is HMAC-SHA256(key, digits): stable for joins and per-card
features, useless without the key. ``card_masked`` keeps the first 6 and last 4
digits (PCI DSS display rule; ``carddata.mask``). Card numbers have 12 to 19
digits (ISO/IEC 7812: 12-digit Maestro cards exist). Work is done once per
*distinct* card value, not per row: a day of transactions has far fewer cards
than rows.

A transaction with a card but no customer id is keyed on its card
(``card_customer_ids``): ``card-`` + the first 32 hex digits of its token.

The key comes from ``$FRAUDOPS_TOKEN_KEY``, else an explicit key file, else a
key generated once under ``workspace.secrets`` with 0600 permissions. Changing
the key changes every token, so runs record a short key id to make that visible.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.compliance.carddata import MAX_DIGITS, SHORTEST_CARD_DIGITS, mask
from pipelines.core import keys
from pipelines.core.keys import MIN_KEY_BYTES, TOKEN_KEY_ID_LABEL, KeyFileError
from pipelines.core.keys import TOKEN_KEY_ENV as KEY_ENV
from pipelines.core.keys import TOKEN_KEY_FILENAME as KEY_FILENAME
from pipelines.data.ingest.errors import IngestError

MIN_CARD_DIGITS = SHORTEST_CARD_DIGITS
MAX_CARD_DIGITS = MAX_DIGITS
_SEPARATORS = re.compile(r"[\s\-]")


@dataclass(frozen=True)
class Tokeniser:
    """Keyed HMAC tokenisation of card numbers."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise IngestError(
                f"token key too short ({len(self.key)} bytes): use at least {MIN_KEY_BYTES}, "
                "e.g. 64 hex characters from `openssl rand -hex 32`"
            )

    def __repr__(self) -> str:  # never print the key
        return f"Tokeniser(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """A short, non-reversible fingerprint of the key, safe to log."""
        return keys.key_id(self.key, TOKEN_KEY_ID_LABEL)

    def token(self, digits: str) -> str:
        return hmac.new(self.key, digits.encode("ascii"), hashlib.sha256).hexdigest()

    def card_lookup(self, values: pa.Array | pa.ChunkedArray) -> pa.Table:
        """One row per distinct raw card value: ``card_raw, card_ok, card_token, card_masked``.

        ``card_ok`` is false for values that are not 12-19 digits (after removing
        spaces and dashes) or fail the Luhn check; those get no token but are
        still masked, because even a mistyped number must not be stored in clear.
        """
        raw = [v for v in pc.unique(values).to_pylist() if v is not None]
        digits = [_SEPARATORS.sub("", v) for v in raw]
        ok = well_formed(digits)
        ok &= luhn_valid([d if good else "0" for d, good in zip(digits, ok, strict=True)])
        tokens = [self.token(d) if good else None for d, good in zip(digits, ok, strict=True)]
        return pa.table(
            {
                "card_raw": pa.array(raw, pa.string()),
                "card_ok": pa.array(ok, pa.bool_()),
                "card_token": pa.array(tokens, pa.string()),
                "card_masked": pa.array([mask_card(v) for v in raw], pa.string()),
            }
        )


def well_formed(digits: list[str]) -> np.ndarray:
    """True where the value is only digits with a card-number length."""
    return np.array(
        [d.isascii() and d.isdigit() and MIN_CARD_DIGITS <= len(d) <= MAX_CARD_DIGITS
         for d in digits],
        dtype=bool,
    )


def luhn_valid(digits: list[str]) -> np.ndarray:
    """Vectorised Luhn check over digit strings (left-padding with zeros keeps the sum)."""
    if not digits:
        return np.zeros(0, dtype=bool)
    width = max(len(d) for d in digits)
    padded = "".join(d.rjust(width, "0") for d in digits).encode("ascii")
    matrix = (np.frombuffer(padded, dtype=np.uint8).reshape(len(digits), width) - 48).astype(
        np.int16
    )
    return luhn_valid_matrix(matrix)


def luhn_valid_matrix(matrix: np.ndarray) -> np.ndarray:
    """Luhn check of each row of a (numbers, digits) matrix of values 0-9, right-aligned."""
    width = matrix.shape[1]
    kept = matrix[:, width - 1 :: -2].sum(axis=1)
    doubled = matrix[:, width - 2 :: -2] * 2
    doubled -= 9 * (doubled > 9)
    return (kept + doubled.sum(axis=1)) % 10 == 0


def mask_card(value: str) -> str:
    """``value``'s digits masked as ``carddata.mask`` does; shorter than a card: all stars."""
    return mask(re.sub(r"\D", "", value))


# The customer id of a transaction that has a card but no customer id. 32 hex digits are
# 128 bits of the HMAC: a collision among a billion cards has odds of ~1e-21, and the id
# is half the bytes of the token in every per-customer sort, hash and online-state key.
# The prefix tells a derived id from one the data gave; like the token it is useless
# without the key and changes with it.
CARD_CUSTOMER_PREFIX = "card-"
CARD_CUSTOMER_HEX = 32


def card_customer_ids(tokens: pa.Array) -> pa.Array:
    """``card-`` + the first 32 hex digits of each card token (the per-card features' key)."""
    short = pc.utf8_slice_codeunits(tokens, 0, CARD_CUSTOMER_HEX)
    return pc.binary_join_element_wise(CARD_CUSTOMER_PREFIX, short, "")


# --- key management (one implementation for every key: pipelines.core.keys) -------------------
@contextmanager
def _as_ingest_error() -> Iterator[None]:
    try:
        yield
    except KeyFileError as exc:
        raise IngestError(str(exc)) from None


def key_from_text(text: str, origin: str) -> bytes:
    """64 hex characters are decoded; any other text is used as UTF-8 bytes."""
    with _as_ingest_error():
        return keys.key_from_text(text, origin)


def load_key(secrets_dir: Path, key_file: Path | None = None) -> bytes:
    """Resolve the key: ``$FRAUDOPS_TOKEN_KEY``, else ``key_file``, else the generated file."""
    with _as_ingest_error():
        return keys.resolve_key(KEY_ENV, secrets_dir / KEY_FILENAME, key_file, "token key")
