"""Layer 4: models. The Docker-free executor of SageMaker pipeline definitions (``executor``),
the model registry with four-eyes approvals (``registry``), deployment history and lineage.
"""
