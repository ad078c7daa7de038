"""Fraud detection and compliance workflow on Amazon SageMaker Pipelines.

The installable package: the pipeline definition (``pipelines.fraud.pipeline``),
the Docker-free local backend, the AWS adapters and the ``fraudops`` CLI.
"""

__version__ = "0.1.0"
