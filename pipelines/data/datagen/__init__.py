"""Synthetic card transactions with labelled fraud and AML patterns.

    from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops

    table = generate_transactions(GeneratorConfig(transactions=100_000, days=30, seed=1))
    drops = write_landing_drops(table, workspace.landing, "csv", malformed_rate=0.01, seed=1)
    drops.malformed_counts  # rows per malformed class, for tests and reconciliation

The same seed gives byte-identical files. Scenario labels and the malformed
classes are described in docs/CONTRACTS.md (landing drops); the realism knobs
live in ``catalog.py``; ``fraudops generate`` is the command line.
"""

from pipelines.data.datagen.cards import luhn_valid
from pipelines.data.datagen.catalog import AML_SCENARIOS, FRAUD_SCENARIOS
from pipelines.data.datagen.config import GeneratorConfig
from pipelines.data.datagen.generator import generate_transactions
from pipelines.data.datagen.malformed import MALFORMED_CLASSES
from pipelines.data.datagen.writer import LandingDrops, drop_name, write_landing_drops

__all__ = [
    "AML_SCENARIOS",
    "FRAUD_SCENARIOS",
    "GeneratorConfig",
    "LandingDrops",
    "MALFORMED_CLASSES",
    "drop_name",
    "generate_transactions",
    "luhn_valid",
    "write_landing_drops",
]
