"""Prefect flows, the entrypoints of prefect.yaml: extract, decompose and audit."""
