"""Analytics over the lake: named queries run locally, alert/case exports, the dashboard.

The named queries themselves live once, in Athena SQL, in
``companions/athena/queries``; ``runner`` runs them on the local DuckDB catalog,
``exports`` puts the SQLite alert/case queue into the lake so the same SQL
finds ``alerts`` and ``cases`` tables, and ``dashboard`` renders them to HTML.
"""
