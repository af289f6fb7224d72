"""Ingest from the web: RSS/Atom feeds polled into the input topic (``finpulse ingest feeds``).

A process of its own beside the worker: the worker never imports it, and it imports neither the CLI,
the local services, the API nor the offline packages (import-linter contracts in pyproject.toml).
"""
