"""Card-data rules (PCI DSS): no clear card numbers and no CVV-like fields after ingestion.

Other units call ``assert_no_card_data(record)`` before they write a record
(audit entries, reports, notifications, case notes). A clear card number is
any run of 13 to 19 digits (optionally grouped by single spaces or dashes)
that passes the Luhn check and is not part of a longer alphanumeric token
(so hex digests and ids do not trip it). Masked numbers (``411111******1111``)
and tokens pass. Pass timestamps as ISO strings, not epoch milliseconds: a
13-digit number that happens to pass Luhn is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pipelines.core.schema import FORBIDDEN_COLUMNS

# Fields that hold a clear card number when they hold anything at all.
CLEAR_CARD_FIELDS: frozenset[str] = frozenset({"card_number", "pan", "primary_account_number"})

_PAN_CANDIDATE = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])")


class CardDataError(ValueError):
    """A record carries a clear card number or a forbidden authentication field."""


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (only 0-9) passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def find_card_numbers(text: str) -> list[str]:
    """Luhn-valid 13-19 digit numbers in ``text``, masked (first6 + last4) for messages."""
    found = []
    for match in _PAN_CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(mask(digits))
    return found


def mask(digits: str) -> str:
    """First six and last four digits, the rest starred (what PCI DSS allows to show)."""
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


_KEY = object()  # marks a mapping key (checked by name) rather than a value


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (dotted path, leaf) for every key and leaf of nested mappings and sequences."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, _KEY
            yield from _walk(item, child)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    else:
        yield path, value


def card_data_problems(record: Any) -> list[str]:
    """Every violation in ``record`` (a mapping, sequence or scalar), as readable messages."""
    problems: list[str] = []
    for path, leaf in _walk(record, ""):
        field = path.rsplit(".", 1)[-1].split("[", 1)[0].lower()
        if leaf is _KEY:
            if field in FORBIDDEN_COLUMNS:
                problems.append(
                    f"field {path!r} is sensitive authentication data (CVV/PIN/track) "
                    "and must never be stored"
                )
            for masked in find_card_numbers(field):
                problems.append(f"a field name contains a card number ({masked})")
            continue
        if field in CLEAR_CARD_FIELDS and leaf not in ("", None):
            problems.append(f"field {path!r} holds a clear card number; store card_token instead")
            continue
        if isinstance(leaf, str | int) and not isinstance(leaf, bool):
            for masked in find_card_numbers(str(leaf)):
                where = f"field {path!r}" if path else "value"
                problems.append(
                    f"{where} contains a card number ({masked}); mask or tokenise it first"
                )
    return problems


def assert_no_card_data(record: Any) -> None:
    """Raise ``CardDataError`` if ``record`` holds a clear card number or a CVV-like field.

    ``record`` may be a dict (nested dicts/lists are searched, keys included),
    a list, or a single string. The message names the field and shows the
    number masked, never in clear.
    """
    problems = card_data_problems(record)
    if problems:
        raise CardDataError("; ".join(problems))
