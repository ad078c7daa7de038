"""The one error type ingestion raises for problems the user can fix."""

from __future__ import annotations


class IngestError(Exception):
    """A file or setting the user must fix; nothing has been written when it is raised.

    Messages name the file (and column or line where known) and say what to do.
    They never contain a card number or any other row value.
    """
