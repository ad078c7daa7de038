"""Who is acting: the one resolver every command, step and record uses.

The acting identity is the operating-system account of the process: the name
the password database gives the real uid (``pwd.getpwuid(os.getuid())``). It
is never taken from ``$USER``, ``$LOGNAME``, ``getpass`` or a command-line
option, because the person acting chooses those. Four-eyes checks, audit
entries, pipeline executions and registrations all use :func:`current_user`.

A name someone types is only a *display name*, recorded beside the account and
never instead of it: ``--approver NAME`` on ``fraudops model approve|reject``
and, for every command, ``$FRAUDOPS_USER`` (typically the label of a service
account, such as ``scheduled-retrain`` for the CI user). Display names are
shown, never compared, so setting one cannot make an account pass for
another.

Identities are compared by :func:`identity_key`, which folds away what makes
two spellings of one name look different or two different-looking names look
alike: Unicode compatibility forms (NFKC), case, invisible and format
characters (zero-width space, joiners, soft hyphen, BOM, fillers), accents,
white space, and the common Latin/Cyrillic/Greek homoglyphs (a skeleton in the
spirit of Unicode TR39). It errs on the side of calling two names the same:
for four-eyes a false match refuses an approval, a false difference would let
someone approve their own work.
"""

from __future__ import annotations

import os
import pwd
import unicodedata
from dataclasses import dataclass

USER_ENV = "FRAUDOPS_USER"
MAX_DISPLAY_NAME = 64

# Characters that render as nothing (or as blank space) but are not in a
# category dropped below: Hangul fillers and the Mongolian vowel separator.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u180e\u2800")
# Dropped after NFKD: combining marks (accents, variation selectors, CGJ),
# format characters (ZWSP, ZWJ, ZWNJ, LRM/RLM, soft hyphen, BOM, word joiner),
# controls, private use, unassigned, and separators (all kinds of space).
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc", "Co", "Cn", "Zs", "Zl", "Zp"})

# Homoglyph skeleton: Cyrillic and Greek letters (both cases) that look like a
# Latin letter map to that letter, lower-cased. Upper-case forms map to what
# they look like (Greek Eta looks like H, not like its lower case eta).
_HOMOGLYPHS = str.maketrans({
    # Cyrillic capitals
    "А": "a", "В": "b", "С": "c", "Е": "e", "Ё": "e", "Н": "h", "І": "i", "Ї": "i",
    "Ј": "j", "К": "k", "М": "m", "О": "o", "Р": "p", "Ԛ": "q", "Ѕ": "s", "Т": "t",
    "У": "y", "Ү": "y", "Ԝ": "w", "Х": "x", "Ӏ": "l",
    # Cyrillic small letters
    "а": "a", "в": "b", "ь": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h",
    "н": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l", "м": "m", "п": "n",
    "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "и": "u", "ц": "u",
    "ѵ": "v", "ԝ": "w", "ш": "w", "х": "x", "у": "y", "ү": "y",
    # Greek capitals
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m",
    "Ν": "n", "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "Ϲ": "c", "Ϳ": "j",
    # Greek small letters
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    "ϲ": "c", "ϳ": "j",
    # Latin look-alikes of other Latin letters
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʟ": "l", "ƅ": "b",
    # Dashes of every kind read as a hyphen-minus
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-",
})
# After case folding: letters and digits that are confused with each other in
# most fonts (TR39 maps 1, I and l together; 0 and o; rn and m; vv and w).
_CONFUSED_SEQUENCES = (("rn", "m"), ("vv", "w"))
_CONFUSED_CHARACTERS = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})


def os_account() -> str:
    """The name of the process's real uid in the password database (``uid:N`` if it has none)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # containers often run a uid without a passwd entry
        return f"uid:{uid}"


def current_user() -> str:
    """The acting identity: the operating-system account (see the module docstring)."""
    return os_account()


def clean_display_name(text: str | None) -> str | None:
    """A typed name made safe to show: printable, one line, at most 64 characters; None if empty."""
    if text is None:
        return None
    kept = "".join(
        " " if char.isspace() else char
        for char in unicodedata.normalize("NFKC", text)
        if char.isspace() or unicodedata.category(char) not in _DROPPED_CATEGORIES
    )
    cleaned = " ".join(kept.split())[:MAX_DISPLAY_NAME]
    return cleaned or None


def display_name(typed: str | None = None) -> str | None:
    """The display name to record: ``typed`` (e.g. ``--approver``) else ``$FRAUDOPS_USER``."""
    return clean_display_name(typed) or clean_display_name(os.environ.get(USER_ENV))


@dataclass(frozen=True)
class Actor:
    """An authenticated account and the display name recorded beside it."""

    account: str
    display: str | None = None

    @property
    def label(self) -> str:
        """``account`` or ``account ("display")``: the account always comes first."""
        if not self.display or identity_key(self.display) == identity_key(self.account):
            return self.account
        return f'{self.account} ("{self.display}")'


def current_actor(typed_display: str | None = None) -> Actor:
    """The OS account with the display name given (or ``$FRAUDOPS_USER``)."""
    return Actor(current_user(), display_name(typed_display))


def identity_key(name: str) -> str:
    """The form in which two names of the same identity compare equal ("" for no name)."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name))
    visible = "".join(
        char
        for char in text
        if char not in _INVISIBLE and unicodedata.category(char) not in _DROPPED_CATEGORIES
    )
    folded = unicodedata.normalize("NFKC", visible.translate(_HOMOGLYPHS)).casefold()
    for sequence, replacement in _CONFUSED_SEQUENCES:
        folded = folded.replace(sequence, replacement)
    return folded.translate(_CONFUSED_CHARACTERS)


def same_identity(first: str, second: str) -> bool:
    """True if both name one identity after :func:`identity_key`; empty names match nothing."""
    key = identity_key(first)
    return bool(key) and key == identity_key(second)
