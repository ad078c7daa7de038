"""QuickSight: Athena data source, SPICE datasets from the named queries, RLS, dashboard."""
