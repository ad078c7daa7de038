"""Layer 2: records a regulator relies on. Card-data protection, the hash-chained audit trail,
workspace locks, the retention policy, the local backup vault and the AWS Backup setup.
Imports only ``core``.
"""
