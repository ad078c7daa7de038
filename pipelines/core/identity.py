"""Who is acting: the one resolver every command, step and record uses.

``$FRAUDOPS_USER`` names a service identity (CI, a scheduled retrain);
otherwise the operating-system user running the process.
"""

from __future__ import annotations

import getpass
import os

USER_ENV = "FRAUDOPS_USER"


def current_user() -> str:
    """``$FRAUDOPS_USER`` if set, else the OS user."""
    return os.environ.get(USER_ENV) or getpass.getuser()
