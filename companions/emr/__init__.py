"""EMR companions: entry points that EMR steps run (``feature_job.py``)."""
