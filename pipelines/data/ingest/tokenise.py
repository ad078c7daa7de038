"""Card numbers -> keyed tokens and masked forms; the clear number never leaves here.

``card_token`` is HMAC-SHA256(key, digits): stable for joins and per-card
features, useless without the key. ``card_masked`` keeps the first 6 and last 4
digits (PCI DSS display rule). Work is done once per *distinct* card value, not
per row: a day of transactions has far fewer cards than rows.

The key comes from ``$FRAUDOPS_TOKEN_KEY``, else an explicit key file, else a
key generated once under ``workspace.secrets`` with 0600 permissions. Changing
the key changes every token, so runs record a short key id to make that visible.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.ingest.errors import IngestError

KEY_ENV = "FRAUDOPS_TOKEN_KEY"
KEY_FILENAME = "card_token.key"
MIN_KEY_BYTES = 16
MIN_CARD_DIGITS = 13
MAX_CARD_DIGITS = 19
_SEPARATORS = re.compile(r"[\s\-]")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


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
        return hmac.new(self.key, b"fraudops-token-key-id", hashlib.sha256).hexdigest()[:12]

    def token(self, digits: str) -> str:
        return hmac.new(self.key, digits.encode("ascii"), hashlib.sha256).hexdigest()

    def card_lookup(self, values: pa.Array | pa.ChunkedArray) -> pa.Table:
        """One row per distinct raw card value: ``card_raw, card_ok, card_token, card_masked``.

        ``card_ok`` is false for values that are not 13-19 digits (after removing
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
    kept = matrix[:, width - 1 :: -2].sum(axis=1)
    doubled = matrix[:, width - 2 :: -2] * 2
    doubled -= 9 * (doubled > 9)
    return (kept + doubled.sum(axis=1)) % 10 == 0


def mask_card(value: str) -> str:
    """First 6 + last 4 digits for card-length values; anything shorter is fully masked."""
    digits = re.sub(r"\D", "", value)
    if len(digits) >= MIN_CARD_DIGITS:
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
    return "*" * max(len(digits), 4)


# --- key management ---------------------------------------------------------------------------
def key_from_text(text: str, origin: str) -> bytes:
    """64 hex characters are decoded; any other text is used as UTF-8 bytes."""
    text = text.strip()
    if not text:
        raise IngestError(f"{origin} is empty: put a key of at least {MIN_KEY_BYTES} bytes there")
    return bytes.fromhex(text) if _HEX_KEY.match(text) else text.encode("utf-8")


def load_key(secrets_dir: Path, key_file: Path | None = None) -> bytes:
    """Resolve the key: ``$FRAUDOPS_TOKEN_KEY``, else ``key_file``, else the generated file."""
    env = os.environ.get(KEY_ENV)
    if env:
        return key_from_text(env, f"${KEY_ENV}")
    if key_file is not None:
        return _read_key_file(Path(key_file))
    return ensure_key_file(secrets_dir / KEY_FILENAME)


def ensure_key_file(path: Path) -> bytes:
    """Create the key file once (0600, exclusive create so two runs never race), then read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(secrets.token_hex(32) + "\n")
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise IngestError(f"token key file {path} does not exist") from exc
    if mode & 0o077:
        raise IngestError(
            f"token key file {path} is readable by other users (mode {mode:o}); "
            f"run `chmod 600 {path}` and try again"
        )
    return key_from_text(path.read_text(encoding="utf-8"), f"token key file {path}")
