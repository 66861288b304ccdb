"""Prefect tasks: thin wrappers that call core/, storage/ and models."""
