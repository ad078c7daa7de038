"""Layer 7: reporting and visualisation. Named queries run locally, alert/case exports, the
dashboard, QuickSight datasets and the regulatory reports (``reports``).

The named queries themselves live once, in Athena SQL, in
``pipelines/data/lake/queries``; ``runner`` runs them on the local DuckDB catalog,
``exports`` puts the SQLite alert/case queue into the lake so the same SQL
finds ``alerts`` and ``cases`` tables, and ``dashboard`` renders them to HTML.
"""
