"""The records key: HMAC-SHA256 over the audit trail, its head and the backup manifests.

A forger who can write the records zone and the vault cannot write records
that verify, because the key lives apart from them: ``$FRAUDOPS_RECORDS_KEY``,
else ``workspace.secrets/records.key`` (0600, generated on first use; never
backed up, never logged). Records store only the key's ``key_id``.

Every MAC is bound to a purpose (``audit-entry``, ``audit-head``,
``snapshot-manifest``, ``audit-intent``) so a MAC made for one kind of record is
never accepted for another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.core import keys
from pipelines.core.workspace import Workspace

RECORDS_KEY_ENV = "FRAUDOPS_RECORDS_KEY"
RECORDS_KEY_FILENAME = "records.key"
_KEY_ID_LABEL = b"fraudops-records-key-id"


class RecordsKeyError(RuntimeError):
    """The records key is missing or unusable; the message says where it is looked for."""


@dataclass(frozen=True)
class RecordsKey:
    """HMAC-SHA256 with the records key."""

    key: bytes

    def __repr__(self) -> str:  # never print the key
        return f"RecordsKey(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return keys.key_id(self.key, _KEY_ID_LABEL)

    def mac(self, purpose: str, body: bytes) -> str:
        return hmac.new(self.key, purpose.encode() + b"\0" + body, hashlib.sha256).hexdigest()

    def check(self, purpose: str, body: bytes, mac: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.mac(purpose, body), mac)


def key_path(ws: Workspace) -> Path:
    return ws.secrets / RECORDS_KEY_FILENAME


def records_key(ws: Workspace, create: bool = True) -> RecordsKey | None:
    """The workspace's records key; ``None`` when there is none and ``create`` is false.

    Raises ``RecordsKeyError`` for a key file readable by others, empty or too short.
    """
    try:
        if not create and not os.environ.get(RECORDS_KEY_ENV) and not key_path(ws).exists():
            return None
        key = keys.resolve_key(RECORDS_KEY_ENV, key_path(ws), what="records key")
    except keys.KeyFileError as exc:  # also a key too short: keys.key_from_text checks
        raise RecordsKeyError(str(exc)) from None
    return RecordsKey(key)


def key_mismatch(ws: Workspace, key: RecordsKey | None, key_id: str, what: str) -> str:
    """Why ``key`` cannot check MACs made with ``key_id`` (empty when it can)."""
    if key is None:
        return (
            f"{what} is authenticated with records key {key_id}, but this workspace has no "
            f"records key: restore {key_path(ws)} (mode 0600) or set ${RECORDS_KEY_ENV}"
        )
    if key.key_id != key_id:
        return (
            f"{what} is authenticated with records key {key_id}, but the available key is "
            f"{key.key_id}: it was forged, or restore the original {key_path(ws)} "
            f"(or ${RECORDS_KEY_ENV})"
        )
    return ""


def require_records_key(ws: Workspace, key_id: str, what: str) -> RecordsKey:
    """The key that made ``key_id``'s MACs, or ``RecordsKeyError`` saying how to supply it."""
    key = records_key(ws, create=False)
    problem = key_mismatch(ws, key, key_id, what)
    if problem:
        raise RecordsKeyError(problem)
    assert key is not None
    return key
