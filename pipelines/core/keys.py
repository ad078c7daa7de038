"""Secret keys kept apart from the data they protect: one way to find, create and name them.

Every key the product uses (the card tokenisation key, the records key that
authenticates the audit trail and backup manifests) is resolved the same way:
an environment variable, else an explicit key file, else a file generated once
under ``workspace.secrets`` with 0600 permissions. A key file readable by
anyone but its owner is refused. Keys are never printed; a short ``key_id``
(an HMAC of a fixed label) names a key in logs and records without revealing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

MIN_KEY_BYTES = 16
# The card tokenisation key: named here because restoring a backup checks it
# (pipelines.compliance) and ingestion uses it (pipelines.data.ingest.tokenise).
TOKEN_KEY_ENV = "FRAUDOPS_TOKEN_KEY"
TOKEN_KEY_FILENAME = "card_token.key"
TOKEN_KEY_ID_LABEL = b"fraudops-token-key-id"
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class KeyFileError(ValueError):
    """A key is missing, empty, too short or readable by other users; the message says the fix."""


def key_from_text(text: str, origin: str) -> bytes:
    """64 hex characters are decoded; any other text is used as UTF-8 bytes."""
    text = text.strip()
    if not text:
        raise KeyFileError(f"{origin} is empty: put a key of at least {MIN_KEY_BYTES} bytes there")
    key = bytes.fromhex(text) if _HEX_KEY.match(text) else text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"{origin} holds {len(key)} bytes, too short for a key (at least {MIN_KEY_BYTES}): "
            "if it was damaged, restore it from a snapshot ('fraudops backup restore'), as a "
            "new key cannot reproduce what the old one made (card tokens, record MACs); for a "
            "first setup use 64 hex characters from `openssl rand -hex 32`"
        )
    return key


def read_key_file(path: Path, what: str = "key") -> bytes:
    """Read a key file that only its owner can read."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} file {path} does not exist") from exc
    if mode & 0o077:
        raise KeyFileError(
            f"{what} file {path} is readable by other users (mode {mode:o}); "
            f"run `chmod 600 {path}` and try again"
        )
    return key_from_text(path.read_text(encoding="utf-8"), f"{what} file {path}")


def _create_key_file(path: Path, text: str) -> None:
    """Exclusive create with 0600 in a 0700 directory; ``FileExistsError`` if it is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text + "\n")


def ensure_key_file(path: Path, what: str = "key") -> bytes:
    """Create the key file once (exclusive create, so two runs never race), then read it."""
    with contextlib.suppress(FileExistsError):
        _create_key_file(path, secrets.token_hex(32))
    return read_key_file(path, what)


def resolve_key(
    env_var: str, default_file: Path, key_file: Path | None = None, what: str = "key"
) -> bytes:
    """``$env_var``, else ``key_file``, else ``default_file`` (generated on first use)."""
    env = os.environ.get(env_var)
    if env:
        return key_from_text(env, f"${env_var}")
    if key_file is not None:
        return read_key_file(Path(key_file), what)
    return ensure_key_file(default_file, what)


def key_id(key: bytes, label: bytes) -> str:
    """A short, non-reversible fingerprint of ``key`` for ``label``: safe to log and store."""
    return hmac.new(key, label, hashlib.sha256).hexdigest()[:12]


def install_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` to ``path`` (0600, in a 0700 directory) so ``read_key_file`` reads it back.

    Refuses to overwrite an existing file. A 32-byte key is written as 64 hex
    characters; any other key came from text (``key_from_text``) and is written as it.
    """
    _create_key_file(path, key.hex() if len(key) == 32 else key.decode("utf-8"))
