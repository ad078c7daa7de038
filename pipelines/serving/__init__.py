"""Layer 6: models at work. Endpoint, online features, stream and batch scoring, alerts and
cases, and deployment on approval (``deploy``).
"""
