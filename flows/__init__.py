"""Prefect flows, one per file. Each body reads like the lifecycle it runs."""
