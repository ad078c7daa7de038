"""Layer 1, the ground floor: the workspace, atomic file io, the canonical schema, identity,
events, notifications, failure reports, where the shipped code lives and the run parameters'
defaults (params: label delay, alert threshold). Imports nothing else of the package.
"""
