"""Athena: DDL generated from the schemas in code, the named-query library, the AWS client."""
