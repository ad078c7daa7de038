"""Where the code that runs outside this package lives.

The SageMaker containers run ``processing/``, ``training/`` and ``inference/``
as standalone programs, and ``infra/`` holds the CloudFormation templates. In a
source checkout they are folders beside ``pipelines/``; a plain (non-editable)
``pip install .`` carries copies under ``pipelines/_bundled/``, made by
``setup.py``'s build step. This module is the one place that knows both, so no
other module computes paths from ``__file__``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed or checked-out pipelines/
BUNDLED_DIR = PACKAGE_DIR / "_bundled"
# Folders shipped with the package: container code and the templates it deploys.
BUNDLED_UNITS: tuple[str, ...] = ("processing", "training", "inference", "infra")


def code_root() -> Path:
    """The directory holding ``processing/``, ``training/``, ``inference/`` and ``infra/``."""
    if BUNDLED_DIR.is_dir():
        return BUNDLED_DIR
    checkout = PACKAGE_DIR.parent
    if all((checkout / unit).is_dir() for unit in BUNDLED_UNITS):
        return checkout
    raise FileNotFoundError(
        f"the container code ({', '.join(BUNDLED_UNITS)}) is neither in {BUNDLED_DIR} nor "
        f"beside {PACKAGE_DIR}; reinstall fraudops with `pip install .` from a full checkout"
    )


def unit_dir(unit: str) -> Path:
    """One shipped folder, e.g. ``unit_dir("processing")``."""
    if unit not in BUNDLED_UNITS:
        raise ValueError(f"unknown code unit {unit!r}; expected one of {BUNDLED_UNITS}")
    return code_root() / unit


def import_root() -> Path:
    """The directory that holds the importable ``pipelines``, ``lambdas`` and ``companions``.

    Lambda and EMR bundles are built from here, and a subprocess that must
    import the package gets it on ``PYTHONPATH``.
    """
    return PACKAGE_DIR.parent
