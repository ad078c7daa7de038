"""Synthetic card transactions with labelled fraud and AML patterns.

``generate_transactions(GeneratorConfig(...))`` builds the table;
``write_landing_drops(table, out_dir, ...)`` writes one landing file per day,
optionally with malformed rows the ingest job must quarantine.
"""

from pipelines.datagen.cards import luhn_valid
from pipelines.datagen.catalog import AML_SCENARIOS, FRAUD_SCENARIOS
from pipelines.datagen.config import GeneratorConfig
from pipelines.datagen.generator import generate_transactions
from pipelines.datagen.malformed import MALFORMED_CLASSES
from pipelines.datagen.writer import LandingDrops, drop_name, write_landing_drops

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
