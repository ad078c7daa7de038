"""Layer 5: the SageMaker pipeline (``pipeline.get_pipeline``, as the SageMaker MLOps project
template lays it out), its offline rendering (``definition``) and module loading (``modules``).
"""
