"""Card-data rules (PCI DSS): no clear card numbers and no CVV-like fields after ingestion.

Other units call ``assert_no_card_data(record)`` before they write a record
(audit entries, reports, notifications, case notes). A clear card number is
any run of 13 to 19 digits (optionally grouped by single spaces or dashes)
that passes the Luhn check and is not part of a longer alphanumeric token
(so hex digests and ids do not trip it). Cards may be 12 digits long
(``SHORTEST_CARD_DIGITS``, Maestro), and the ``card_number`` column takes
them, but in text a 12-digit number is far more often a reference or an id
than a card, so the scan starts at 13. Masked numbers (``411111******1111``)
and tokens pass. Pass timestamps as ISO strings, not epoch milliseconds: a
13-digit number that happens to pass Luhn is refused.

Ingestion uses the same definition to mask numbers found in free text
(``mask_card_numbers``) and, through ``CARD_NUMBER_PREFILTER``, to find the few
values worth checking among millions without a Python loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pipelines.core.schema import FORBIDDEN_COLUMNS

# Fields that hold a clear card number when they hold anything at all.
CLEAR_CARD_FIELDS: frozenset[str] = frozenset({"card_number", "pan", "primary_account_number"})
MIN_DIGITS = 13
MAX_DIGITS = 19

_NOT_ALNUM = "[^0-9A-Za-z]"
_DIGIT_RUN = "[0-9](?:[ -]?[0-9]){12,18}"
# RE2 syntax (no look-around) for Arrow's regex kernels: true for every value in which
# ``mask_card_numbers`` could find something; only those values are checked in Python.
CARD_NUMBER_PREFILTER = f"(?:^|{_NOT_ALNUM}){_DIGIT_RUN}(?:$|{_NOT_ALNUM})"
# A maximal run of digits grouped by single spaces or dashes, not inside a longer token.
_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9]+(?:[ -][0-9]+)*(?![0-9A-Za-z])")
_GROUP = re.compile(r"[0-9]+")

# Sensitive authentication data names: camelCase, digits and separators split words.
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Short names that are also parts of ordinary words (sPINning, deCIDe): whole words only.
_WHOLE_WORD_ONLY = frozenset({"pin", "cid", "csc", "cvn", "cvd"})
_NGRAM = 3  # longest run of words joined into one name ("card verification value")


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


def _card_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, digits)`` of every clear card number in ``text``.

    Within a run of digit groups (``1234 4111 1111 1111 1111``) every
    contiguous range of groups is tried, so a number next to other digits is
    still found; overlapping finds are merged so each digit is masked once.
    """
    spans: list[tuple[int, int]] = []
    for run in _RUN.finditer(text):
        groups = [(g.start(), g.end()) for g in _GROUP.finditer(run.group(0))]
        base = run.start()
        for first in range(len(groups)):
            digits = ""
            for last in range(first, len(groups)):
                digits += run.group(0)[groups[last][0]:groups[last][1]]
                if len(digits) > MAX_DIGITS:
                    break
                if len(digits) >= MIN_DIGITS and luhn_valid(digits):
                    spans.append((base + groups[first][0], base + groups[last][1]))
    merged: list[tuple[int, int, str]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            start = merged[-1][0]
            end = max(end, merged.pop()[1])
        merged.append((start, end, re.sub(r"[ -]", "", text[start:end])))
    return merged


def find_card_numbers(text: str) -> list[str]:
    """Luhn-valid 13-19 digit numbers in ``text``, masked (first6 + last4) for messages."""
    return [mask(digits) for _, _, digits in _card_spans(text)]


def card_numbers_in_file(name: str, data: bytes) -> list[str]:
    """Masked clear card numbers in a written file's bytes (a report, a record).

    A PDF's cross-reference table is zero-padded byte offsets, not content, so
    it is left out; everything else is read as latin-1 (every byte a character).
    """
    if name.endswith(".pdf"):
        data = data.rsplit(b"\nxref\n", 1)[0]
    return find_card_numbers(data.decode("latin-1"))


def mask_card_numbers(text: str) -> str:
    """``text`` with every clear card number replaced by its masked form; else unchanged."""
    spans = _card_spans(text)
    for start, end, digits in reversed(spans):
        text = text[:start] + mask(digits) + text[end:]
    return text


# Shortest card number ISO/IEC 7812 allows (12-digit Maestro cards exist); the text scan
# above starts at 13 (MIN_DIGITS) because 12-digit ids and references are common in text.
SHORTEST_CARD_DIGITS = 12


def mask(digits: str) -> str:
    """First six and last four digits, the rest starred (what PCI DSS allows to show).

    A 12-digit number shows its first four and last four: first six and last
    four would hide only two digits, and as the last digit is the Luhn check
    digit only ~10 numbers would fit the mask. Hiding four leaves ~1,000, as
    the usual mask does for a 14-digit number; the last four still name the
    card to its holder and the first four its scheme (Maestro 6304...).
    Anything shorter than a card number is starred whole.
    """
    if len(digits) < SHORTEST_CARD_DIGITS:
        return "*" * max(len(digits), 4)
    head = 6 if len(digits) > SHORTEST_CARD_DIGITS else 4
    return digits[:head] + "*" * (len(digits) - head - 4) + digits[-4:]


def is_sensitive_auth_field(name: str) -> bool:
    """True when a field name means CVV/CVC/CID, a PIN or track data, however it is spelt.

    The name is split into words (``CVVNumber`` -> cvv, number; ``security_code``
    -> security, code), and runs of up to three consecutive words are joined and
    compared with ``schema.FORBIDDEN_COLUMNS``; longer forbidden names also
    match inside a single word (``securitycode``, ``cardpin``).
    """
    words = [word.lower() for word in _WORDS.findall(name)]
    for size in range(1, _NGRAM + 1):
        for start in range(len(words) - size + 1):
            if "".join(words[start:start + size]) in FORBIDDEN_COLUMNS:
                return True
    squashed = "".join(words)
    return any(forbidden in squashed for forbidden in FORBIDDEN_COLUMNS - _WHOLE_WORD_ONLY)


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
        field = path.rsplit(".", 1)[-1].split("[", 1)[0]
        if leaf is _KEY:
            if is_sensitive_auth_field(field):
                problems.append(
                    f"field {path!r} is sensitive authentication data (CVV/PIN/track) "
                    "and must never be stored"
                )
            for masked in find_card_numbers(field):
                problems.append(f"a field name contains a card number ({masked})")
            continue
        if field.lower() in CLEAR_CARD_FIELDS and leaf not in ("", None):
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
