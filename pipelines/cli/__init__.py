"""Layer 9, the top: the ``fraudops`` commands (``commands``), and the SageMaker project
template's ``run-pipeline`` and ``get-pipeline-definition`` entry points. Nothing imports it.
"""
