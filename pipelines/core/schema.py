"""The canonical transaction: one definition shared by every engine.

Landing files may use any column names; a column map renames them to these.
Only the required columns must be present; a missing optional column is
filled with nulls and nothing downstream breaks.
"""

from __future__ import annotations

import pyarrow as pa

# Every canonical landing column, in the order tables and quarantine records use.
LANDING_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "terminal_id",
    "amount",
    # ``card_number`` exists only in landing: it is tokenised during ingestion and
    # never stored in clear downstream.
    "card_number",
    "currency",
    "merchant_category",
    "channel",
    "country",
    "is_cash",
    "is_fraud",
    "fraud_scenario",
)

# Required in every landing file (after the column map is applied); ``is_fraud`` too
# for training, which the training side checks.
REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "amount")

# Strongly expected but optional. Without ``transaction_id`` ingestion derives a stable
# id from each row's content; without customer or terminal ids they are stored null and
# the entity features that need them are left out.
ID_COLUMNS: tuple[str, ...] = ("transaction_id", "customer_id", "terminal_id")

OPTIONAL_COLUMNS: tuple[str, ...] = tuple(c for c in LANDING_COLUMNS if c not in REQUIRED_COLUMNS)

# Fields that must never be accepted anywhere (PCI DSS: no sensitive
# authentication data after authorisation), as normalised names: lower case,
# words joined without separators. ``compliance.carddata.is_sensitive_auth_field``
# matches a field name against them (``CVVNumber``, ``cardPin``, ``security_code``).
FORBIDDEN_COLUMNS: frozenset[str] = frozenset(
    {
        "cvv", "cvv2", "cvc", "cvc2", "cid", "csc", "cvn", "cvn2", "cav2", "cvd",
        "securitycode", "cardsecuritycode", "cardverificationvalue", "cardverificationcode",
        "pin", "cardpin", "pinblock", "pinnumber",
        "trackdata", "track1", "track2", "track3", "magstripe", "magneticstripe",
    }
)

CHANNELS: tuple[str, ...] = ("card_present", "ecommerce", "atm")
DEFAULT_CURRENCY = "USD"

# The curated table: typed, tokenised, partitioned by ``dt`` (the UTC day).
CURATED_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.string()),  # null when the data has no customer ids
        pa.field("terminal_id", pa.string()),  # null when the data has no terminal ids
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("card_token", pa.string()),
        pa.field("card_masked", pa.string()),
        pa.field("currency", pa.string()),
        pa.field("merchant_category", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("country", pa.string()),
        pa.field("is_cash", pa.bool_()),
        pa.field("is_fraud", pa.int8()),
        pa.field("fraud_scenario", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("ingestion_id", pa.string()),
        pa.field("dt", pa.string(), nullable=False),
    ]
)

# Rejected rows keep every original value as text, plus why and where.
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in LANDING_COLUMNS if name != "card_number"]
    + [
        pa.field("card_masked", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
        # Last physical line of the row (a quoted value may span lines); null where unknown.
        pa.field("source_line_end", pa.int64()),
        pa.field("ingestion_id", pa.string(), nullable=False),
        pa.field("dt", pa.string(), nullable=False),
    ]
)

PARTITION_COLUMN = "dt"
LABEL_COLUMN = "is_fraud"
ENTITY_COLUMN = "customer_id"  # the card/customer the per-entity features key on
