"""The one error type ingestion raises for problems the user can fix, and the card-number guard.

Landing files may hold clear card numbers anywhere (a header-less file's first
row becomes the "header", a parser error quotes the line it choked on). No
exception leaving ingestion may carry one: ``IngestError`` masks its own
message, and ``card_numbers_masked`` re-raises any other exception whose text
holds a card number as ``MaskedIngestFailure`` with the number masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.compliance.carddata import mask_card_numbers


class IngestError(Exception):
    """A file or setting the user must fix; nothing has been written when it is raised.

    Messages name the file (and column or line where known) and say what to do.
    They never contain a card number: one that slips into a message (a header
    cell, a file name) is masked here.
    """

    def __init__(self, message: str) -> None:
        super().__init__(mask_card_numbers(message))


class MaskedIngestFailure(RuntimeError):
    """An unexpected failure whose original message held a card number (shown masked)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the causes a traceback would print with it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        suppressed = current.__suppress_context__
        current = current.__cause__ or (None if suppressed else current.__context__)


@contextmanager
def card_numbers_masked() -> Iterator[None]:
    """Let exceptions through unchanged unless their text (or a cause's) holds a card number.

    Such an exception is replaced by ``MaskedIngestFailure`` carrying the masked
    text and the original traceback (frames show code, never values), and its
    chain is cut so no handler or log prints the clear original.
    """
    try:
        yield
    except Exception as exc:
        texts = [f"{type(e).__name__}: {e}" for e in _chain(exc)]
        masked = [mask_card_numbers(text) for text in texts]
        if masked == texts:
            raise
        if isinstance(exc, IngestError):  # masked itself, but a cause held the number
            raise IngestError(str(exc)).with_traceback(exc.__traceback__) from None
        raise MaskedIngestFailure("; caused by ".join(masked)).with_traceback(
            exc.__traceback__
        ) from None
