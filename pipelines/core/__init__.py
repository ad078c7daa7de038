"""Layer 1, the ground floor: the workspace, atomic file io, the canonical schema, identity,
events, notifications, failure reports and where the shipped code lives. Imports nothing else
of the package.
"""
